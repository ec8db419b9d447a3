//! Running ONNX models in ONNX Runtime, loaded at run time (`ort` with `load-dynamic`) from
//! `ORT_DYLIB_PATH` or from an installed `onnxruntime` Python package.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, ArrayViewD};

pub mod alloc;
pub mod timing;
pub mod tract;

/// The environment variable with which ONNX Runtime (1.32 and later, official builds) turns off
/// its telemetry on Linux and macOS: with it unset, loading the library creates a device id under
/// `~/.cache/Microsoft/DeveloperTools` and a 1DS uploader that resolves and contacts Microsoft's
/// collector, sending the models' producer, graph names and metadata among other events
/// (docs/Privacy.md of onnxruntime). A checker run in CI must not do that behind its user's back.
pub const TELEMETRY_OPT_OUT: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_OPT_OUT`] to `1` for this process unless the user set it (to anything, `0`
/// included: their choice stands). The library reads it when it initialises, before any API call
/// could turn telemetry off, so it must be in the environment before ONNX Runtime loads.
///
/// # Safety
///
/// Changes the process environment: call it while the process has ONE thread (first thing in
/// `main`), as [`std::env::set_var`] requires; no other thread may read or write the
/// environment meanwhile.
pub unsafe fn opt_out_of_telemetry() {
    if std::env::var_os(TELEMETRY_OPT_OUT).is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var(TELEMETRY_OPT_OUT, "1") };
    }
}

/// Execution providers that can be requested from ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ep {
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT.
    TensorRt,
}

impl Ep {
    /// Parses `cuda` / `tensorrt`.
    pub fn parse(s: &str) -> Option<Ep> {
        match s {
            "cuda" => Some(Ep::Cuda),
            "tensorrt" | "trt" => Some(Ep::TensorRt),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ep::Cuda => "CUDA",
            Ep::TensorRt => "TensorRT",
        }
    }
}

/// The runtime a check runs the ONNX in.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    /// ONNX Runtime, loaded from its shared library, with an execution provider if requested.
    Ort(&'static OrtRuntime, Option<Ep>),
    /// tract, built in.
    Tract,
}

impl Engine {
    /// Chooses: `ort` (must load), `tract`, or `auto` (ONNX Runtime when found, else tract). An
    /// execution provider needs ONNX Runtime and is registered strictly (failure is an error).
    pub fn choose(choice: &str, ep: Option<Ep>) -> Result<Engine, RuntimeError> {
        if ep.is_some() && choice == "tract" {
            return Err(RuntimeError::TractHasNoProvider);
        }
        match (choice, ep) {
            ("ort", _) | ("auto", Some(_)) => ort().map(|rt| Engine::Ort(rt, ep)),
            ("tract", _) => Ok(Engine::Tract),
            ("auto", None) => Ok(ort()
                .map(|rt| Engine::Ort(rt, None))
                .unwrap_or(Engine::Tract)),
            (other, _) => Err(RuntimeError::UnknownRuntime(other.to_string())),
        }
    }

    /// `onnxruntime 1.32.0` / `tract 0.23`.
    pub fn name(&self) -> String {
        match self {
            Engine::Ort(rt, None) => format!("onnxruntime {}", rt.version),
            Engine::Ort(rt, Some(ep)) => format!("onnxruntime {} ({})", rt.version, ep.name()),
            Engine::Tract => format!("tract {}", tract::VERSION),
        }
    }

    /// Runs model bytes.
    pub fn run(
        &self,
        model: &[u8],
        inputs: &[(&str, ArrayD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        self.prepare(ModelSource::Bytes(model))?.run(&views(inputs))
    }

    /// Runs a model file (external data beside it).
    pub fn run_file(
        &self,
        path: &Path,
        inputs: &[(&str, ArrayD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        self.prepare(ModelSource::File(path))?.run(&views(inputs))
    }

    /// Makes `model` ready to run, once for any number of runs: ONNX Runtime creates its
    /// session here (the `ONNX Runtime session` timing phase); tract, which optimises for the
    /// inputs' shapes, keeps the source and does its work in each run.
    pub fn prepare<'a>(&self, model: ModelSource<'a>) -> Result<Prepared<'a>, RuntimeError> {
        Ok(Prepared(match self {
            Engine::Ort(rt, ep) => Ready::Ort(rt.session(model, *ep)?),
            Engine::Tract => Ready::Tract(model),
        }))
    }
}

/// Where an ONNX model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// Serialised bytes.
    Bytes(&'a [u8]),
    /// A file (external data beside it).
    File(&'a Path),
}

/// Borrowed views of named inputs.
fn views<'a>(inputs: &'a [(&'a str, ArrayD<f32>)]) -> Vec<(&'a str, ArrayViewD<'a, f32>)> {
    inputs.iter().map(|(n, a)| (*n, a.view())).collect()
}

/// A model made ready by [`Engine::prepare`]. It can be made on one thread and run on another.
pub struct Prepared<'a>(Ready<'a>);

enum Ready<'a> {
    Ort(ort::session::Session),
    Tract(ModelSource<'a>),
}

impl Prepared<'_> {
    /// Runs the model on named f32 inputs and returns every output as f32, in the model's order.
    /// ONNX Runtime reads the inputs where they are, without a copy.
    pub fn run(
        &mut self,
        inputs: &[(&str, ArrayViewD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        match &mut self.0 {
            Ready::Ort(session) => OrtRuntime::run_session(session, inputs),
            Ready::Tract(ModelSource::Bytes(b)) => tract::run(Some(b), None, inputs),
            Ready::Tract(ModelSource::File(p)) => tract::run(None, Some(p), inputs),
        }
    }
}

/// The runtime layer's error: one variant per way finding, loading or running a runtime fails.
/// It is `Clone` because the outcome of loading ONNX Runtime is kept for the whole process, so
/// the libraries' own errors are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// `--ep` with `--runtime tract`.
    #[error("execution providers are ONNX Runtime's; tract has none")]
    TractHasNoProvider,
    /// A runtime name that is neither `ort`, `tract` nor `auto`.
    #[error("unknown runtime '{0}' (ort, tract)")]
    UnknownRuntime(String),
    /// `ORT_DYLIB_PATH` names no file.
    #[error("ORT_DYLIB_PATH={} is not a file", .0.display())]
    DylibPathNotFile(PathBuf),
    /// No ONNX Runtime library was found anywhere it is looked for.
    #[error(
        "ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime, or `pip install onnxruntime`"
    )]
    NotFound,
    /// The library was found but does not load.
    #[error("cannot load ONNX Runtime from {}: {source}", path.display())]
    Load {
        /// The library.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: Arc<ort::LoadDynamicError>,
    },
    /// The library loaded but its environment could not be made.
    #[error("ONNX Runtime at {}: {source}", path.display())]
    Environment {
        /// The library.
        path: PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: Arc<ort::Error>,
    },
    /// A step of making a session or running it failed (`session`, `run`, …).
    #[error("ONNX Runtime {step}: {source}")]
    Ort {
        /// The step.
        step: &'static str,
        /// ONNX Runtime's error.
        #[source]
        source: Arc<ort::Error>,
    },
    /// A session option was refused (its text from ONNX Runtime).
    #[error("ONNX Runtime {step}: {message}")]
    Option {
        /// The option.
        step: &'static str,
        /// ONNX Runtime's message.
        message: String,
    },
    /// The requested execution provider could not be registered.
    #[error(
        "ONNX Runtime {version} at {} cannot register the {provider} execution provider: {message}",
        path.display()
    )]
    Provider {
        /// The runtime's version.
        version: String,
        /// The library.
        path: PathBuf,
        /// The provider (`CUDA`, `TensorRT`).
        provider: &'static str,
        /// ONNX Runtime's message.
        message: String,
    },
    /// An output that is neither f32 nor an integer class map.
    #[error("ONNX Runtime output {name}: {source}")]
    Output {
        /// The output.
        name: String,
        /// ONNX Runtime's error.
        #[source]
        source: Arc<ort::Error>,
    },
    /// A graph output that is one of the graph's inputs: the model passes its input through.
    #[error("the model's output {name} is one of its inputs: it computes nothing from it")]
    OutputIsInput {
        /// The output (and input).
        name: String,
    },
    /// An integer class map holding a label f32 cannot hold exactly.
    #[error("ONNX Runtime output {name}: label {label} is beyond what f32 holds exactly")]
    Label {
        /// The output.
        name: String,
        /// The label.
        label: i64,
    },
    /// A step of tract failed (its error chain as text: tract's errors are not `Clone`).
    #[error("tract {step}: {message}")]
    Tract {
        /// The step (`cannot load the model`, `run`, …).
        step: &'static str,
        /// tract's error with its causes.
        message: String,
    },
    /// tract was asked to run without a model.
    #[error("tract: no model")]
    TractNoModel,
    /// tract lacks the transform that runs f16 models in f32.
    #[error("tract: no f16_to_f32 transform")]
    NoF16Transform,
    /// An input or output whose element count does not fit its shape.
    #[error("{0}")]
    Shape(#[from] ndarray::ShapeError),
}

/// A loaded ONNX Runtime.
pub struct OrtRuntime {
    /// The shared library.
    pub path: PathBuf,
    /// Its version (`1.32.0`).
    pub version: String,
    env: ort::environment::Environment,
}

impl fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ONNX Runtime {} ({})", self.version, self.path.display())
    }
}

static ORT: OnceLock<Result<OrtRuntime, RuntimeError>> = OnceLock::new();

/// The shared library's version, from its file name (`libonnxruntime.so.1.32.0`).
fn version_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name.split(".so.")
        .nth(1)
        .or_else(|| {
            name.strip_prefix("libonnxruntime.")
                .and_then(|r| r.strip_suffix(".dylib"))
        })
        .unwrap_or("unknown")
        .to_string()
}

/// Finds `libonnxruntime` in an `onnxruntime` package folder (`…/onnxruntime/capi/`).
fn in_package(dir: &Path) -> Option<PathBuf> {
    let capi = dir.join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            n.starts_with("libonnxruntime.so")
                || (n.starts_with("libonnxruntime.") && n.ends_with(".dylib"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The `onnxruntime` package in the `site-packages` of a virtual environment (`<venv>/lib/*/`).
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| in_package(&e.path().join("site-packages").join("onnxruntime")))
}

/// The virtual environment this executable was installed into by pip (`<venv>/bin/fuse-ema`
/// beside `<venv>/pyvenv.cfg`), which need not be the active one.
fn own_venv() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let venv = exe.parent()?.parent()?;
    venv.join("pyvenv.cfg")
        .is_file()
        .then(|| venv.to_path_buf())
}

/// Where the ONNX Runtime library is: `ORT_DYLIB_PATH`, then the `onnxruntime` package of the
/// active virtual environment, then of the one fuse-ema was pip-installed into (`pip install
/// "fuse-ema[ort]"`, run without activating it), then of `python3` on the PATH (asked only for
/// its location).
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::DylibPathNotFile(p))
        };
    }
    if let Some(p) = std::env::var_os("VIRTUAL_ENV").and_then(|v| in_venv(Path::new(&v))) {
        return Ok(p);
    }
    if let Some(p) = own_venv().and_then(|v| in_venv(&v)) {
        return Ok(p);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u; s = u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s else '')"])
        .output();
    if let Ok(out) = out {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !dir.is_empty()
            && let Some(p) = in_package(Path::new(&dir))
        {
            return Ok(p);
        }
    }
    Err(RuntimeError::NotFound)
}

/// Ends the process with exit status `code`, once stdout and stderr are flushed. When ONNX
/// Runtime was loaded this skips the C library's exit handlers: ONNX Runtime's free its
/// globals and join its threads (~10 ms on a 2-core machine), work the kernel does anyway when
/// the process ends. Nothing of fuse-ema's own needs them: outputs are renamed into place or
/// removed by their guards before the command returns, and the signal handlers' registries are
/// in memory only. Without ONNX Runtime it is `std::process::exit`.
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    timing::mark("exit");
    if matches!(ORT.get(), Some(Ok(_))) {
        // A flush that fails (a closed pipe) is no reason to change the status: what could be
        // written was, as `std::process::exit` would have left it.
        let _ = std::io::stdout().lock().flush();
        let _ = std::io::stderr().lock().flush();
        // SAFETY: `_exit` ends the process at once; every buffer we own is flushed above.
        unsafe { libc::_exit(code) }
    }
    std::process::exit(code)
}

/// The process-wide ONNX Runtime, loaded on first use.
pub fn ort() -> Result<&'static OrtRuntime, RuntimeError> {
    ORT.get_or_init(|| {
        let path = find_library()?;
        let env = ort::init_from(&path).map_err(|e| RuntimeError::Load {
            path: path.clone(),
            source: Arc::new(e),
        })?;
        let env = env
            .with_name("fuse-ema")
            // Where the process environment could not be set first (fuse-ema used as a library),
            // this at least stops the events after initialisation.
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment {
                path: path.clone(),
                source: Arc::new(e),
            })?;
        Ok(OrtRuntime {
            version: version_of(&path),
            path,
            env,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

impl OrtRuntime {
    /// Runs the model file at `path` (external data files are found beside it).
    pub fn run_file(
        &self,
        path: &Path,
        inputs: &[(&str, ArrayD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        self.session(ModelSource::File(path), None)
            .and_then(|mut s| Self::run_session(&mut s, &views(inputs)))
    }

    /// Runs `model` on named f32 inputs and returns every output as f32, in the model's order.
    pub fn run(
        &self,
        model: &[u8],
        inputs: &[(&str, ArrayD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        self.session(ModelSource::Bytes(model), None)
            .and_then(|mut s| Self::run_session(&mut s, &views(inputs)))
    }

    /// A session for `model` with execution provider `ep`, refused when a graph output is one
    /// of its inputs.
    fn session(
        &self,
        model: ModelSource,
        ep: Option<Ep>,
    ) -> Result<ort::session::Session, RuntimeError> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut builder = ort::session::Session::builder(&self.env)
            .map_err(e("session"))?
            .with_intra_threads(threads)
            .map_err(|err| RuntimeError::Option {
                step: "threads",
                message: err.to_string(),
            })?;
        if let Some(ep) = ep {
            let dispatch = match ep {
                Ep::Cuda => ort::ep::CUDA::default().build(),
                Ep::TensorRt => ort::ep::TensorRT::default().build(),
            };
            builder = builder
                .with_execution_providers([dispatch.error_on_failure()])
                .map_err(|err| RuntimeError::Provider {
                    version: self.version.clone(),
                    path: self.path.clone(),
                    provider: ep.name(),
                    message: err.to_string(),
                })?;
        }
        let session = timing::phase("ONNX Runtime session", || match model {
            ModelSource::Bytes(b) => builder.commit_from_memory(b),
            ModelSource::File(p) => builder.commit_from_file(p),
        })
        .map_err(e("cannot load the model"))?;
        // A graph output that is a graph input is the input's own buffer, which ONNX Runtime
        // hands back without a copy: it computes nothing, and reading it after the input is
        // freed would read freed memory.
        if let Some(o) = (session.outputs().iter())
            .find(|o| session.inputs().iter().any(|i| i.name() == o.name()))
        {
            return Err(RuntimeError::OutputIsInput {
                name: o.name().to_string(),
            });
        }
        Ok(session)
    }

    /// Runs `session` on named f32 inputs and returns every output as f32, in the model's order.
    fn run_session(
        session: &mut ort::session::Session,
        inputs: &[(&str, ArrayViewD<f32>)],
    ) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        // The buffers outlive `outputs`: an output may still point into an input's buffer.
        // ONNX Runtime reads them where they are (it does not write its inputs); one that is
        // not contiguous is copied into a standard layout first.
        let buffers: Vec<_> = inputs.iter().map(|(_, a)| a.as_standard_layout()).collect();
        let mut values = Vec::new();
        for ((name, _), a) in inputs.iter().zip(&buffers) {
            let t = ort::value::TensorRef::from_array_view(a.view()).map_err(e("input"))?;
            values.push((
                std::borrow::Cow::from(*name),
                ort::session::SessionInputValue::from(t),
            ));
        }
        let outputs =
            timing::phase("ONNX Runtime run", || session.run(values)).map_err(e("run"))?;
        let mut out = Vec::new();
        for (name, v) in outputs.iter() {
            let a = match v.try_extract_array::<f32>() {
                Ok(a) => a.to_owned(),
                Err(err) => widen_labels(&v, name).ok_or_else(|| RuntimeError::Output {
                    name: name.to_string(),
                    source: Arc::new(err),
                })??,
            };
            out.push((name.to_string(), a));
        }
        // Every output is copied out above; they go before the input buffers they may point
        // into (an output ONNX Runtime hands back without a copy).
        drop(outputs);
        drop(buffers);
        Ok(out)
    }
}

/// The error of ONNX Runtime step `step`.
fn e(step: &'static str) -> impl Fn(ort::Error) -> RuntimeError {
    move |err| RuntimeError::Ort {
        step,
        source: Arc::new(err),
    }
}

/// An integer output (a class map: uint8, int32 or int64) as f32, which holds every label up to
/// 2^24 exactly; a larger one is an error, never a rounded label. `None` when the output is not
/// one of those types.
fn widen_labels<V: ort::value::TensorValueTypeMarker>(
    v: &ort::value::Value<V>,
    name: &str,
) -> Option<Result<ArrayD<f32>, RuntimeError>> {
    const EXACT: i64 = 1 << 24;
    let check = |a: ArrayD<i64>| match a.iter().find(|x| x.unsigned_abs() > EXACT as u64) {
        Some(&label) => Err(RuntimeError::Label {
            name: name.to_string(),
            label,
        }),
        None => Ok(a.mapv(|x| x as f32)),
    };
    if let Ok(a) = v.try_extract_array::<u8>() {
        return Some(Ok(a.mapv(f32::from)));
    }
    if let Ok(a) = v.try_extract_array::<i32>() {
        return Some(check(a.mapv(i64::from)));
    }
    if let Ok(a) = v.try_extract_array::<i64>() {
        return Some(check(a.to_owned()));
    }
    None
}
