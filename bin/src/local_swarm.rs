//! Nodes on loopback in this process, each with a fresh repo: what `demo` and
//! `bench infer` run their swarms on, and the models they add to them.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cid::Cid;
use ipfs_accelerate_node::config::NodeConfig;
use ipfs_accelerate_node::engine::gguf;
use ipfs_accelerate_node::infer::ServeConfig;
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::profile::Profile;
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_node::{Node, Repo};

/// A node listening on loopback with a fresh repo at `path`, bootstrapped to
/// `bootstrap`, on the LAN DHT and without mDNS (it must not meet other local swarms).
pub(crate) async fn start_node(path: &Path, bootstrap: Vec<String>) -> Result<Node> {
    let repo = Repo::init(path, NodeConfig::default())?;
    let overrides = NetworkOverrides {
        bootstrap,
        profile: Some(Profile::Test),
        ..NetworkOverrides::default()
    };
    let node = Node::start(repo, overrides, ServeConfig::default()).await?;
    node.p2p().wait_listening(Duration::from_secs(10)).await?;
    Ok(node)
}

/// The address others dial to reach `node`, with its peer id.
pub(crate) async fn dial_address(node: &Node) -> Result<String> {
    let address = node
        .addresses()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the node has no listen address"))?;
    Ok(address.to_string())
}

/// Adds the folder to the node's repo, pinned, and returns its root CID.
pub(crate) async fn import_folder(node: &Node, folder: &Path) -> Result<Cid> {
    let (store, folder) = (node.store(), folder.to_owned());
    let options = ImportOptions {
        pin: true,
        ..ImportOptions::default()
    };
    let added = tokio::task::spawn_blocking(move || {
        unixfs::add_path(&store, &folder, &options, &mut |_| {}, &mut |_| {})
    })
    .await??;
    Ok(added.cid)
}

/// Converts the GGUF file `file` into a model folder under `scratch` (kept until the
/// caller drops it) and adds that folder like [`import_folder`].
pub(crate) async fn import_gguf(
    node: &Node,
    file: &Path,
    scratch: &Path,
) -> Result<(Cid, gguf::Converted)> {
    let folder = scratch.join("gguf-import");
    std::fs::create_dir_all(&folder)?;
    let (from, to) = (file.to_owned(), folder.clone());
    let converted =
        tokio::task::spawn_blocking(move || gguf::convert(&from, &to, &mut |_, _| {})).await??;
    Ok((import_folder(node, &folder).await?, converted))
}
