//! Gathering `doctor`'s facts: asking the daemon's API and gateway (every call under
//! [`PROBE_TIMEOUT`]), trying the configured addresses, and, with no daemon, opening
//! the repo itself. What the facts mean is decided in [`super::checks`].

use std::io::{Cursor, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cid::{Cid, Version};
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::store::Store;
use ipfs_accelerate_protocol::{Block, codec};

use super::checks::{Bind, EMPTY_DIR, GatewayAnswer, RepoFact, RoundTrip, RoundTripFailure, Via};
use crate::api::Client;
use crate::multipart::MultipartBody;

/// Longest any one call to the daemon or its gateway may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Random bytes in the round trip's block: unique, so it never names a block the repo
/// already holds (whose removal would lose data).
const ROUND_TRIP_RANDOM_BYTES: usize = 32;
/// Most of the gateway's answer read: the empty directory's block is 4 bytes.
const GATEWAY_ANSWER_LIMIT: u64 = 64 * 1024;

/// Whether this process could listen on `addr`; the listener is closed at once.
pub(crate) fn bind(addr: &str) -> Bind {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Bind::Free,
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Bind::Taken,
        Err(error) => Bind::Refused(error.to_string()),
    }
}

/// The daemon's API address as its `api` file names it (`/ip4/127.0.0.1/tcp/5001`).
pub(crate) fn api_file_addr(repo: &Path) -> Option<String> {
    std::fs::read_to_string(Repo::api_file(repo))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The daemon's gateway URL: from its `gateway` file, or else the configured address.
pub(crate) fn gateway_url(repo: &Path, configured: &str) -> String {
    std::fs::read_to_string(Repo::gateway_file(repo))
        .ok()
        .map(|text| text.trim().trim_end_matches('/').to_owned())
        .filter(|url| url.starts_with("http://"))
        .unwrap_or_else(|| format!("http://{configured}"))
}

/// Asks the gateway at `url` for the empty directory's raw block and checks its bytes
/// against the CID.
pub(crate) fn gateway(url: &str) -> GatewayAnswer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PROBE_TIMEOUT))
        .build()
        .into();
    let response = agent
        .get(format!("{url}/ipfs/{EMPTY_DIR}?format=raw"))
        .header("Accept", "application/vnd.ipld.raw")
        .call();
    let response = match response {
        Ok(response) => response,
        Err(error) => return GatewayAnswer::Unreachable(error.to_string()),
    };
    let status = response.status();
    if !status.is_success() {
        return GatewayAnswer::Status(status.as_u16());
    }
    let mut body = Vec::new();
    if let Err(error) = response
        .into_body()
        .into_reader()
        .take(GATEWAY_ANSWER_LIMIT)
        .read_to_end(&mut body)
    {
        return GatewayAnswer::Unreachable(error.to_string());
    }
    let verified = Cid::try_from(EMPTY_DIR)
        .is_ok_and(|cid| ipfs_accelerate_protocol::block::verify(&cid, &body).is_ok());
    match verified {
        true => GatewayAnswer::Verified,
        false => GatewayAnswer::WrongBytes,
    }
}

/// A small block of random bytes no repo holds yet.
fn random_block() -> Result<Block> {
    let mut data = b"ipfs-accelerate doctor ".to_vec();
    data.extend(rand::random::<[u8; ROUND_TRIP_RANDOM_BYTES]>());
    let sha2_256 = codec::hash_from_name("sha2-256").context("sha2-256 is known")?;
    Ok(Block::from_data(Version::V1, codec::RAW, sha2_256, data)?)
}

/// Stores a random block through the API, reads it back, compares, and removes it.
pub(crate) fn round_trip_api(client: &Client) -> RoundTrip {
    timed(Via::Api, |block| api_trip(client, block))
}

/// Runs `trip` on a fresh random block, timed.
fn timed(via: Via, trip: impl FnOnce(&Block) -> Result<(), RoundTripFailure>) -> RoundTrip {
    let block = match random_block() {
        Ok(block) => block,
        Err(error) => {
            return RoundTrip {
                via,
                bytes: 0,
                result: Err(RoundTripFailure::Put(format!("{error:#}"))),
            };
        }
    };
    let started = Instant::now();
    let result = trip(&block).map(|()| started.elapsed());
    RoundTrip {
        via,
        bytes: block.len(),
        result,
    }
}

fn api_trip(client: &Client, block: &Block) -> Result<(), RoundTripFailure> {
    let body = MultipartBody::new().reader("", Box::new(Cursor::new(block.data().to_vec())));
    let text = client
        .upload("block/put", &[], body)
        .map_err(|e| RoundTripFailure::Put(format!("{e:#}")))?;
    let stored: types::BlockStat = crate::api::parse("block/put", &text)
        .map_err(|e| RoundTripFailure::Put(format!("{e:#}")))?;
    let read = read_back(client, block, &stored.key);
    // Whatever was read, the block does not stay.
    let removed: Result<types::BlockRm> = client.json("block/rm", &[("arg", stored.key)]);
    read?;
    match removed {
        Ok(answer) if answer.error.is_empty() => Ok(()),
        Ok(answer) => Err(RoundTripFailure::Remove(answer.error)),
        Err(error) => Err(RoundTripFailure::Remove(format!("{error:#}"))),
    }
}

/// Checks that the block stored as `key` is `block`: the same CID, the same bytes.
fn read_back(client: &Client, block: &Block, key: &str) -> Result<(), RoundTripFailure> {
    let expected = block.cid().to_string();
    if key != expected {
        return Err(RoundTripFailure::WrongCid {
            expected,
            got: key.to_owned(),
        });
    }
    let mut read = Vec::new();
    client
        .call("block/get", &[("arg", expected)], None)
        .and_then(|body| {
            body.take(block.len() as u64 + 1)
                .read_to_end(&mut read)
                .context("reading block/get's answer")
        })
        .map_err(|e| RoundTripFailure::Get(format!("{e:#}")))?;
    match read == block.data()[..] {
        true => Ok(()),
        false => Err(RoundTripFailure::WrongBytes),
    }
}

/// The same round trip straight on the datastore, with no daemon running.
pub(crate) fn round_trip_store(store: &Store) -> RoundTrip {
    timed(Via::Datastore, |block| store_trip(store, block))
}

fn store_trip(store: &Store, block: &Block) -> Result<(), RoundTripFailure> {
    store
        .put_many(std::slice::from_ref(block))
        .map_err(|e| RoundTripFailure::Put(e.to_string()))?;
    // `get` re-hashes what it reads: bytes that changed are an error, not a block.
    let read = store.get(block.cid());
    let removed = store.remove_block(block.cid());
    let read = read.map_err(|e| RoundTripFailure::Get(e.to_string()))?;
    if read.data() != block.data() {
        return Err(RoundTripFailure::WrongBytes);
    }
    removed
        .map(|_| ())
        .map_err(|e| RoundTripFailure::Remove(e.to_string()))
}

/// The repo's size against its limits.
pub(crate) fn repo_stat(
    blocks: u64,
    bytes: u64,
    config: &ipfs_accelerate_node::NodeConfig,
) -> RepoFact {
    RepoFact::Stat {
        blocks,
        bytes,
        storage_max: config.datastore.storage_max,
        high_watermark: config.datastore.high_bytes(),
    }
}

/// Opens the repo (taking its lock, so no daemon can start meanwhile) and reads its
/// size; the repo comes back to run the offline round trip on.
pub(crate) fn open_repo(path: &Path) -> (RepoFact, Option<Repo>) {
    let repo = match Repo::open(path) {
        Ok(repo) => repo,
        Err(repo::Error::InUse { holder, .. }) => return (RepoFact::Locked { holder }, None),
        Err(repo::Error::NotInitialized(path)) => {
            let path = path.display().to_string();
            return (RepoFact::Missing { path }, None);
        }
        Err(repo::Error::Config { reason, .. }) => return (RepoFact::BadConfig(reason), None),
        Err(error) => return (RepoFact::Unreadable(error.to_string()), None),
    };
    match repo.store().stat() {
        Ok(stat) => (
            repo_stat(stat.blocks, stat.bytes, repo.config()),
            Some(repo),
        ),
        Err(error) => (RepoFact::Unreadable(error.to_string()), None),
    }
}
