//! Configuration: the validated model lives in the core (`pingpost_core::config`, re-exported
//! here); `load` turns a TOML document into it, reporting every error at once with its key
//! path.

mod load;

pub use load::{load_file, load_file_with_env, load_str, load_str_with_env, ConfigErrors};
pub use pingpost_core::config::*;
