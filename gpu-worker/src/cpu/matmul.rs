//! Which library runs the CPU encoder's dense products: Intel oneMKL (opened at
//! run time from PyPI's `mkl` wheel, see the `tenantai-mkl` crate) where it is
//! found, with its AMX and VNNI kernels for bf16 and int8; otherwise gemmkit.
//!
//! The choice is made once per process: `gpu-worker serve --matmul` (and
//! `--mkl-lib`) call [`select`] before the model loads; anything that loads a
//! model without it (`tenantai dev`, the benchmark) gets [`selected`]'s choice
//! from `TENANTAI_MATMUL` and `TENANTAI_MKL_LIB`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use tenantai_mkl::Mkl;

/// What to run the dense products on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulChoice {
    /// oneMKL if it opens (at `TENANTAI_MKL_LIB`, else `libmkl_rt.so.2` on the
    /// loader's path), else gemmkit.
    #[default]
    Auto,
    /// oneMKL, or fail to start.
    Mkl,
    /// gemmkit's safe Rust kernels.
    Gemmkit,
}

impl FromStr for MatmulChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(MatmulChoice::Auto),
            "mkl" => Ok(MatmulChoice::Mkl),
            "gemmkit" => Ok(MatmulChoice::Gemmkit),
            other => Err(format!(
                "unknown matmul library {other:?}: expected auto, mkl or gemmkit"
            )),
        }
    }
}

/// The library in use.
#[derive(Debug, Clone)]
pub enum Matmul {
    Gemmkit,
    Mkl(Arc<Mkl>),
}

impl Matmul {
    /// `mkl` or `gemmkit`, as `/health` and the logs say it.
    pub fn name(&self) -> &'static str {
        match self {
            Matmul::Gemmkit => "gemmkit",
            Matmul::Mkl(_) => "mkl",
        }
    }

    /// Opens the library `choice` names (`lib`: where oneMKL is).
    pub fn open(choice: MatmulChoice, lib: Option<&Path>) -> Result<Matmul, String> {
        match choice {
            MatmulChoice::Gemmkit => Ok(Matmul::Gemmkit),
            MatmulChoice::Mkl => Mkl::open(lib)
                .map(|mkl| Matmul::Mkl(Arc::new(mkl)))
                .map_err(|e| format!("--matmul mkl: {e}")),
            MatmulChoice::Auto => match Mkl::open(lib) {
                Ok(mkl) => Ok(Matmul::Mkl(Arc::new(mkl))),
                Err(e) => {
                    if lib.is_some() {
                        tracing::warn!(error = %e, "oneMKL did not open: dense products run on gemmkit");
                    }
                    Ok(Matmul::Gemmkit)
                }
            },
        }
    }
}

static SELECTED: OnceLock<Matmul> = OnceLock::new();

/// Makes `choice` the process's library. A second call keeps the first choice
/// (models already loaded use it) and says so.
pub fn select(choice: MatmulChoice, lib: Option<&Path>) -> Result<&'static Matmul, String> {
    let matmul = Matmul::open(choice, lib)?;
    let name = matmul.name();
    let selected = SELECTED.get_or_init(|| matmul);
    if selected.name() != name {
        tracing::warn!(
            kept = selected.name(),
            asked = name,
            "the matmul library was already chosen"
        );
    }
    log(selected);
    Ok(selected)
}

/// The process's library: the one [`select`] chose, else `TENANTAI_MATMUL`'s
/// (default auto; a `mkl` that does not open falls back to gemmkit with an error
/// logged).
pub fn selected() -> &'static Matmul {
    SELECTED.get_or_init(|| {
        let choice = std::env::var("TENANTAI_MATMUL")
            .ok()
            .and_then(|v| {
                v.parse()
                    .map_err(|e| tracing::error!(error = %e, "TENANTAI_MATMUL ignored"))
                    .ok()
            })
            .unwrap_or_default();
        let lib = std::env::var_os("TENANTAI_MKL_LIB").map(PathBuf::from);
        let matmul = Matmul::open(choice, lib.as_deref()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "dense products run on gemmkit");
            Matmul::Gemmkit
        });
        log(&matmul);
        matmul
    })
}

fn log(matmul: &Matmul) {
    match matmul {
        Matmul::Mkl(mkl) => tracing::info!(
            library = %mkl.path().display(),
            version = mkl.version(),
            "CPU dense products on oneMKL"
        ),
        Matmul::Gemmkit => tracing::info!("CPU dense products on gemmkit"),
    }
}

/// The libraries a test should run on: gemmkit, and oneMKL where
/// `TENANTAI_MKL_LIB` names it (required when `TENANTAI_REQUIRE_MKL=1`, as CI sets).
#[cfg(test)]
pub(crate) fn for_tests() -> Vec<Matmul> {
    let required = std::env::var("TENANTAI_REQUIRE_MKL").is_ok_and(|v| v == "1");
    let lib = std::env::var_os("TENANTAI_MKL_LIB").map(PathBuf::from);
    let mut out = vec![Matmul::Gemmkit];
    match (lib, required) {
        (Some(lib), _) => match Matmul::open(MatmulChoice::Mkl, Some(&lib)) {
            Ok(mkl) => out.push(mkl),
            Err(e) => panic!("{e}"),
        },
        (None, true) => panic!("TENANTAI_REQUIRE_MKL=1 but TENANTAI_MKL_LIB is unset"),
        (None, false) => eprintln!("TENANTAI_MKL_LIB is unset: oneMKL is not exercised"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!("MKL".parse(), Ok(MatmulChoice::Mkl));
        assert_eq!("gemmkit".parse(), Ok(MatmulChoice::Gemmkit));
        assert!("openblas".parse::<MatmulChoice>().is_err());
    }

    #[test]
    fn auto_falls_back_to_gemmkit_and_mkl_refuses_a_missing_library() {
        let missing = Path::new("/nonexistent/libmkl_rt.so.2");
        let auto = Matmul::open(MatmulChoice::Auto, Some(missing));
        assert_eq!(auto.map(|m| m.name()), Ok("gemmkit"));
        let err = Matmul::open(MatmulChoice::Mkl, Some(missing)).unwrap_err();
        assert!(err.contains("/nonexistent/libmkl_rt.so.2"), "{err}");
    }
}
