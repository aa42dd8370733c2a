//! The JSON bodies of the HTTP API as types: the handlers serialize them and the CLI
//! reads them back, so both sides agree on one definition instead of on field names
//! spelled twice.
//!
//! Field names and casing are Kubo's on Kubo's routes ([`kubo`]) and ours on
//! `/api/v0/accelerate/...` ([`accelerate`]). Every struct declares its fields in the
//! byte order of their JSON names: the routes were first written with `serde_json`
//! maps, which write keys in that order, and Kubo's own RPC clients are tested against
//! those bytes (`tests/kubo_rpc_client.rs`). The tests below hold each type to it. An
//! `Option` sent as `null` has no `skip_serializing_if`; one that is left out has.
//!
//! These are wire types: CIDs, peer ids and addresses are strings, so the CLI needs
//! nothing but serde to read them.

pub mod accelerate;
pub mod kubo;

pub use accelerate::*;
pub use kubo::*;

#[cfg(test)]
pub(crate) mod testing {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// Checks that `typed` writes exactly the bytes `untyped` (the `json!` the route
    /// used to build) writes, and reads back to itself.
    pub(crate) fn same_bytes<T>(typed: &T, untyped: serde_json::Value)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(typed).unwrap();
        assert_eq!(text, untyped.to_string());
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, typed);
    }
}
