//! The seven stages, one file each: what it consumes, where its record lives, and what it
//! does, over ports.

pub mod approve;
pub mod deploy;
pub mod gate;
pub mod ingest;
pub mod notify;
pub mod promote;
pub mod test;
