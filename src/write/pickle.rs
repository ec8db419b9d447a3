//! The `data.pkl` of a torch state dict: protocol 2, an `OrderedDict` of tensors rebuilt with
//! `torch._utils._rebuild_tensor_v2` — only globals that `torch.load(weights_only=True)` allows.

use crate::tensor::DType;

/// One tensor entry: name, dtype, shape (storage key is its index).
pub struct Entry<'a> {
    /// State dict key.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Shape; written contiguous with offset 0.
    pub shape: &'a [usize],
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'X'); // BINUNICODE
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) {
    if let Ok(small) = i32::try_from(v) {
        out.push(b'J'); // BININT
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]); // LONG1, 8 bytes
        out.extend_from_slice(&(v as i64).to_le_bytes());
    }
}

fn tuple(out: &mut Vec<u8>, items: &[usize]) {
    out.push(b'(');
    for &i in items {
        int(out, i);
    }
    out.push(b't');
}

/// Serialises the state dict. Storage keys are the entries' indices.
pub fn state_dict(entries: &[Entry]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
    for (i, e) in entries.iter().enumerate() {
        let class = e.dtype.storage_class().expect("caller checked the dtype");
        let numel: usize = e.shape.iter().product();
        let mut strides = vec![1usize; e.shape.len()];
        for d in (0..e.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * e.shape[d + 1].max(1);
        }
        string(&mut p, e.name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        string(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        string(&mut p, &i.to_string());
        string(&mut p, "cpu");
        int(&mut p, numel);
        p.extend_from_slice(b"tQ"); // TUPLE, BINPERSID
        int(&mut p, 0);
        tuple(&mut p, e.shape);
        tuple(&mut p, &strides);
        p.push(0x89); // NEWFALSE: requires_grad
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R"); // backward hooks
        p.extend_from_slice(b"tR"); // TUPLE, REDUCE
    }
    p.extend_from_slice(b"u.");
    p
}
