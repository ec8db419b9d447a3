//! Reading pickled `nn.Module` attributes and weights, as the ONNX builder and the reference
//! interpreter need them.

use crate::checkpoint::module;
use crate::checkpoint::value::{Graph, Node, Value};
use crate::convert::{to_f32_vec, to_f64_vec};

/// A module in the checkpoint's object graph.
#[derive(Clone, Copy)]
pub struct ModuleRef<'g> {
    /// The object graph.
    pub g: &'g Graph,
    /// The module object.
    pub v: &'g Value,
}

/// A weight's values as f32 and its shape.
pub type Weight = (Vec<f32>, Vec<i64>);

/// Why a module's child or weight could not be read; the text names the class and the key.
#[derive(Debug, thiserror::Error)]
pub enum AttrError {
    /// No child module of that name.
    #[error("{class} has no child module '{name}'")]
    NoChild {
        /// The module's class.
        class: String,
        /// The child asked for.
        name: String,
    },
    /// A parameter or buffer entry that holds something other than a tensor.
    #[error("{class}.{name} is not a tensor")]
    NotATensor {
        /// The module's class.
        class: String,
        /// The entry.
        name: String,
    },
    /// A tensor of a dtype that has no f32 reading (integers, bool).
    #[error("{class}.{name} has dtype {dtype}")]
    NotFloat {
        /// The module's class.
        class: String,
        /// The entry.
        name: String,
        /// Its dtype.
        dtype: crate::tensor::DType,
    },
    /// A tensor whose bytes cannot be read (a compressed storage that does not decompress).
    #[error("{class}.{name}: {source}")]
    Unreadable {
        /// The module's class.
        class: String,
        /// The entry.
        name: String,
        /// The reader's refusal.
        #[source]
        source: std::io::Error,
    },
    /// A flag whose Python truth value this reader cannot decide (an object with its own
    /// `__bool__`/`__len__`, a tensor of several elements): torch's `if self.add:` would use it.
    #[error("{class}.{name} is a {kind}, whose truth value this reader cannot decide")]
    NoTruthValue {
        /// The module's class.
        class: String,
        /// The attribute.
        name: String,
        /// What it holds.
        kind: &'static str,
    },
    /// A required parameter or buffer that is absent (or None).
    #[error("{class} has no tensor '{name}'")]
    NoTensor {
        /// The module's class.
        class: String,
        /// The entry.
        name: String,
    },
}

impl<'g> ModuleRef<'g> {
    /// The class name without module path (`Conv`, `C2f`).
    pub fn class(&self) -> String {
        module::short_class(self.g, self.v).unwrap_or_else(|| "?".into())
    }

    /// A named child module.
    pub fn child(&self, name: &str) -> Result<ModuleRef<'g>, AttrError> {
        let c = module::children(self.g, self.v)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
            .ok_or_else(|| AttrError::NoChild {
                class: self.class(),
                name: name.to_string(),
            })?;
        Ok(ModuleRef { g: self.g, v: c })
    }

    /// A named child, if present.
    pub fn opt_child(&self, name: &str) -> Option<ModuleRef<'g>> {
        self.child(name).ok()
    }

    /// All child modules in order.
    pub fn children(&self) -> Vec<(&'g str, ModuleRef<'g>)> {
        module::children(self.g, self.v)
            .into_iter()
            .map(|(n, c)| (n, ModuleRef { g: self.g, v: c }))
            .collect()
    }

    /// An instance attribute.
    pub fn attr(&self, name: &str) -> Option<&'g Value> {
        self.g.attr(self.v, name)
    }

    /// An integer attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.attr(name)?.as_int()
    }

    /// A float attribute (ints accepted).
    pub fn float(&self, name: &str) -> Option<f64> {
        self.attr(name)?.as_f64()
    }

    /// A flag as `if self.<name>:` reads it: Python's truth value (`None`, zero and empty are
    /// false; `1.0`, a non-empty string or list true). `Ok(None)` when the attribute is absent;
    /// an error where the truth value is not decidable here (an object's own `__bool__`).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, AttrError> {
        let Some(v) = self.attr(name) else {
            return Ok(None);
        };
        let truth = match v {
            Value::None => Some(false),
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            // Beyond 64 bits, so never zero.
            Value::BigInt(_) => Some(true),
            Value::Float(f) => Some(*f != 0.0),
            Value::Str(t) => Some(!t.is_empty()),
            Value::Node(_) => match self.g.get(v) {
                Some(
                    Node::List(items)
                    | Node::Tuple(items)
                    | Node::Set(items)
                    | Node::FrozenSet(items),
                ) => Some(!items.is_empty()),
                Some(Node::Dict(entries)) => Some(!entries.is_empty()),
                Some(Node::Bytes(b)) => Some(!b.is_empty()),
                _ => None,
            },
        };
        truth.map(Some).ok_or_else(|| AttrError::NoTruthValue {
            class: self.class(),
            name: name.to_string(),
            kind: self.g.get(v).map(|n| n.kind()).unwrap_or("value"),
        })
    }

    /// An int, or a tuple/list of ints (kernel sizes, strides, `f`).
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let v = self.attr(name)?;
        if let Some(i) = v.as_int() {
            return Some(vec![i]);
        }
        self.g.seq(v)?.iter().map(Value::as_int).collect()
    }

    /// A string attribute.
    pub fn str(&self, name: &str) -> Option<&'g str> {
        self.attr(name)?.as_str()
    }

    /// A parameter or buffer as f32 with its shape (f16/bf16 upcast exactly).
    pub fn tensor_f32(&self, name: &str) -> Result<Option<Weight>, AttrError> {
        let t = ["_parameters", "_buffers"]
            .iter()
            .filter_map(|a| self.attr(a))
            .find_map(|d| self.g.dict_get(d, name));
        let t = match t {
            None | Some(Value::None) => return Ok(None),
            Some(t) => t,
        };
        let t = match self.g.get(t) {
            Some(Node::Tensor(t)) => t,
            _ => {
                return Err(AttrError::NotATensor {
                    class: self.class(),
                    name: name.to_string(),
                });
            }
        };
        let data = to_f32_vec(t)
            .map_err(|source| AttrError::Unreadable {
                class: self.class(),
                name: name.to_string(),
                source,
            })?
            .ok_or_else(|| AttrError::NotFloat {
                class: self.class(),
                name: name.to_string(),
                dtype: t.dtype(),
            })?;
        Ok(Some((data, t.shape().iter().map(|&d| d as i64).collect())))
    }

    /// A required parameter or buffer.
    pub fn need_f32(&self, name: &str) -> Result<Weight, AttrError> {
        self.tensor_f32(name)?.ok_or_else(|| AttrError::NoTensor {
            class: self.class(),
            name: name.to_string(),
        })
    }

    /// A tensor attribute that is not a parameter or buffer (Detect's `stride`): `None` when
    /// there is none or it holds no real numbers, an error when its bytes cannot be read.
    pub fn attr_tensor_f64(&self, name: &str) -> Result<Option<Vec<f64>>, AttrError> {
        let Some(t) = self.attr(name).and_then(|v| self.g.tensor(v)) else {
            return Ok(None);
        };
        to_f64_vec(t).map_err(|source| AttrError::Unreadable {
            class: self.class(),
            name: name.to_string(),
            source,
        })
    }
}
