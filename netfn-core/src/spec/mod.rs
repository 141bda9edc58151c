//! Chain files: TOML → [`ChainFile`], with every error of a file reported at once.

pub mod diag;
mod model;
mod parse;
pub(crate) mod raw;
mod validate;

pub use model::{ChainFile, ChainSpec, EndpointSpec, FastPath, FunctionSpec};
pub use parse::{LoadError, MAX_FILE_BYTES, load, load_with, parse, parse_with, read_text};
