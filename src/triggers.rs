//! The closed set of triggers. Each owns its event source and hands invocations to
//! `dispatch`; none builds an engine.

pub mod http;
pub mod timer;
pub mod watch;
