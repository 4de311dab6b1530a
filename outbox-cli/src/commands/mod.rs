//! One module per subcommand.

pub(crate) mod dashboard;
pub(crate) mod dead;
pub(crate) mod migrate;
pub(crate) mod purge;
pub(crate) mod relay;
pub(crate) mod status;
