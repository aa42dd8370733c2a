//! `NodeConfig`: the repo's `config.toml`. Every field has a default, so a config file
//! only needs the settings a user changed; flags and environment override it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default cap on the repo's size: 10 GB, as Kubo's `Datastore.StorageMax`.
pub const DEFAULT_STORAGE_MAX: u64 = 10_000_000_000;
/// Above this percentage of `storage_max`, unpinned content is evicted.
pub const DEFAULT_HIGH_WATERMARK: u8 = 90;
/// Eviction stops at this percentage of `storage_max`.
pub const DEFAULT_LOW_WATERMARK: u8 = 70;

/// The whole configuration of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub identity: IdentityConfig,
    pub datastore: DatastoreConfig,
    pub import: ImportConfig,
    pub network: NetworkConfig,
    pub api: ApiConfig,
    pub gateway: GatewayConfig,
    pub models: ModelsConfig,
    pub swarm: SwarmConfig,
}

/// Who this node is. The private key lives in `identity.key` beside the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The peer id derived from the key, recorded for people reading the file.
    pub peer_id: String,
}

/// Storage limits and cache behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatastoreConfig {
    /// Size cap in bytes; unpinned content beyond the high watermark is evicted.
    pub storage_max: u64,
    /// Percentage of `storage_max` at which eviction starts.
    pub high_watermark: u8,
    /// Percentage of `storage_max` eviction frees down to.
    pub low_watermark: u8,
}

impl Default for DatastoreConfig {
    fn default() -> Self {
        DatastoreConfig {
            storage_max: DEFAULT_STORAGE_MAX,
            high_watermark: DEFAULT_HIGH_WATERMARK,
            low_watermark: DEFAULT_LOW_WATERMARK,
        }
    }
}

impl DatastoreConfig {
    pub fn high_bytes(&self) -> u64 {
        percent_of(self.storage_max, self.high_watermark)
    }

    pub fn low_bytes(&self) -> u64 {
        percent_of(
            self.storage_max,
            self.low_watermark.min(self.high_watermark),
        )
    }
}

fn percent_of(total: u64, percent: u8) -> u64 {
    (u128::from(total) * u128::from(percent.min(100)) / 100) as u64
}

/// The daemon's network: swarm addresses, discovery, DHT, and the HTTP endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Swarm listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers dialed at start (multiaddrs ending in `/p2p/<id>`).
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Kademlia protocol: `/ipfs/lan/kad/1.0.0`, Kubo's LAN DHT, or `/ipfs/kad/1.0.0`,
    /// the public one.
    pub dht_protocol: String,
    /// HTTP RPC API address (Kubo's paths under /api/v0).
    pub api: String,
    /// HTTP gateway address.
    pub gateway: String,
    /// A second address for OpenAI's API (`/v1`) alone, which the API's address
    /// serves too. Empty (the default): only there.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub openai: String,
    /// What goes on the DHT as provider records: `all` blocks (Kubo's default),
    /// the blocks of `pinned` DAGs, or pin `roots` only.
    pub provide_strategy: ProvideStrategy,
    /// How often provider records are announced again, in seconds.
    pub reprovide_interval_secs: u64,
    /// Largest inference request read from a peer, in bytes.
    pub infer_request_limit: usize,
    /// Largest inference response read from a peer, in bytes.
    pub infer_response_limit: usize,
    /// Connected peers the connection manager trims down to (Kubo's LowWater).
    pub low_water: usize,
    /// Connected peers above which it trims (Kubo's HighWater).
    pub high_water: usize,
    /// Seconds a new connection is safe from trimming (Kubo's GracePeriod).
    pub grace_period_secs: u64,
    /// When set (not empty), the HTTP API answers only requests with `Authorization:
    /// Bearer <token>`; the CLI on this repo sends it. The gateway stays open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
    /// Trustless HTTP gateways (`https://host[/prefix]`) asked for a block no peer
    /// delivered within `gateways_delay_ms`; every answer is verified against its CID.
    /// Empty (the default): blocks come from peers only.
    pub gateways: Vec<String>,
    /// Milliseconds peers have to deliver a block before the gateways are asked too
    /// (at once when no peer is connected).
    pub gateways_delay_ms: u64,
    /// Seconds one gateway request may take, from connecting to the last byte.
    pub gateways_timeout_secs: u64,
    /// Rounds over every gateway after the first fails, each after a doubling backoff.
    pub gateways_retries: u32,
    /// Learn whether peers can dial us (AutoNAT v2), and dial others back when asked.
    pub autonat: bool,
    /// Relay for others (circuit relay v2, Kubo's limits) while AutoNAT finds us
    /// publicly reachable.
    pub relay_service: bool,
    /// Dial peers through relays; behind a NAT, reserve slots on relays and announce
    /// the relayed addresses.
    pub relay_client: bool,
    /// Relays to reserve on while we are not known to be publicly reachable
    /// (multiaddrs ending in `/p2p/<id>`), before any found on the network.
    pub relays: Vec<String>,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR).
    pub hole_punching: bool,
    /// Ask the router to forward our listen port (UPnP IGD). Off unless set: it
    /// multicasts on the LAN.
    pub upnp: bool,
}

impl NetworkConfig {
    /// The API's bearer token, if one is set (an empty one counts as none).
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_deref().filter(|token| !token.is_empty())
    }
}

/// Which blocks a node announces on the DHT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvideStrategy {
    /// Every stored block, so any block of a DAG leads peers here.
    #[default]
    All,
    /// Every block of recursively pinned DAGs, and directly pinned blocks.
    Pinned,
    /// Only pinned roots: fewest records; peers find us by the root CID.
    Roots,
}

impl Default for NetworkConfig {
    /// The `lan` profile's peers ([`crate::profile`]).
    fn default() -> Self {
        let mut network = NetworkConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            dht_protocol: String::new(),
            api: "127.0.0.1:5001".into(),
            gateway: "127.0.0.1:8080".into(),
            openai: String::new(),
            provide_strategy: ProvideStrategy::default(),
            reprovide_interval_secs: 12 * 60 * 60,
            infer_request_limit: ipfs_accelerate_protocol::limits::INFER_REQUEST_LIMIT,
            infer_response_limit: ipfs_accelerate_protocol::limits::INFER_RESPONSE_LIMIT,
            low_water: 32,
            high_water: 96,
            grace_period_secs: 20,
            api_token: None,
            gateways: Vec::new(),
            gateways_delay_ms: crate::fallback::DEFAULT_DELAY.as_millis() as u64,
            gateways_timeout_secs: crate::fallback::DEFAULT_TIMEOUT.as_secs(),
            gateways_retries: crate::fallback::DEFAULT_RETRIES,
            autonat: true,
            relay_service: true,
            relay_client: true,
            relays: Vec::new(),
            hole_punching: true,
            upnp: false,
        };
        crate::profile::Profile::Lan.apply(&mut network);
        network
    }
}

/// Default cap on connections the API serves at once.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 256;
/// Default cap on connections the gateway serves at once.
pub const DEFAULT_GATEWAY_MAX_CONNECTIONS: usize = 1024;
/// Default seconds a client has to send a request's headers, and an idle keep-alive
/// connection is kept (hyper's default header timeout).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 30;
/// Default seconds a response may wait on a client that does not read it.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Default seconds an API answer may wait on a client that does not read: longer, as
/// the API's clients are local programs (`cat | less` may pause).
pub const DEFAULT_API_WRITE_TIMEOUT_SECS: u64 = 120;
/// Default seconds the gateway may take to start an answer (its headers).
pub const DEFAULT_GATEWAY_REQUEST_TIMEOUT_SECS: u64 = 120;

/// The HTTP RPC API (`/api/v0`): who may call it from a browser, and its connection
/// limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Web origins (`scheme://host[:port]`, or `*`) whose pages may call the API, as
    /// Kubo's `API.HTTPHeaders.Access-Control-Allow-Origin`. A request with any other
    /// `Origin` or `Referer` is refused with 403; programs send neither. Empty (the
    /// default): no web page may call the API.
    pub allowed_origins: Vec<String>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds to receive a request's headers, to keep an idle connection, and that a
    /// request body may send nothing before it is cut (408).
    pub header_timeout_secs: u64,
    /// Seconds a response may wait on a client that stops reading before it is cut.
    pub write_timeout_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            allowed_origins: Vec::new(),
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            write_timeout_secs: DEFAULT_API_WRITE_TIMEOUT_SECS,
        }
    }
}

/// The HTTP gateway (`/ipfs/...`): CORS and connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `Access-Control-Allow-Origin` on GET and HEAD answers: `*` (Kubo's default) lets
    /// any page read public content; an origin limits it to that one; empty sends none.
    pub cors_allow_origin: String,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds to receive a request's headers, to keep an idle connection, and that a
    /// request body may send nothing before it is cut (408).
    pub header_timeout_secs: u64,
    /// Seconds a response may wait on a client that stops reading before it is cut.
    pub write_timeout_secs: u64,
    /// Seconds to start an answer (find the content, send the headers).
    pub request_timeout_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            cors_allow_origin: "*".into(),
            max_connections: DEFAULT_GATEWAY_MAX_CONNECTIONS,
            header_timeout_secs: DEFAULT_HEADER_TIMEOUT_SECS,
            write_timeout_secs: DEFAULT_WRITE_TIMEOUT_SECS,
            request_timeout_secs: DEFAULT_GATEWAY_REQUEST_TIMEOUT_SECS,
        }
    }
}

impl ApiConfig {
    /// `write_timeout_secs`, at least a second.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    /// `header_timeout_secs`, at least a second.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }
}

impl GatewayConfig {
    /// `write_timeout_secs`, at least a second.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }

    /// `header_timeout_secs`, at least a second.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    /// `request_timeout_secs`, at least a second.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

/// Defaults for `add`; flags override them per call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    pub cid_version: u8,
    pub raw_leaves: bool,
    pub chunk_size: usize,
    pub max_file_links: usize,
}

impl Default for ImportConfig {
    /// What `ipfs add --cid-version=1` gives.
    fn default() -> Self {
        ImportConfig {
            cid_version: 1,
            raw_leaves: true,
            chunk_size: 256 * 1024,
            max_file_links: 174,
        }
    }
}

/// Default share of remote inference calls also sent to a second provider to check it.
pub const DEFAULT_SPOT_CHECK_SHARE: f64 = 0.05;

/// Who may speak for a model name, and how much we check providers
/// (see [`crate::trust`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Publishers trusted for a name whatever was heard first; a name listed here is
    /// never pinned on first use.
    pub trusted: Vec<TrustedPublisher>,
    /// Share of remote inference calls (0.0 to 1.0) also sent to a second provider,
    /// whose answer must agree; a provider outvoted on a check is no longer used.
    pub spot_check_share: f64,
    /// Serve private models (published with `--encrypt-to`) to any peer, not only to
    /// their recipients (default false).
    pub serve_private_to_anyone: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            trusted: Vec::new(),
            spot_check_share: DEFAULT_SPOT_CHECK_SHARE,
            serve_private_to_anyone: false,
        }
    }
}

/// What peers may make this node hold: connections, Bitswap streams and buffers, DHT
/// records. The defaults suit a desktop or server node, as Kubo's resource manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmConfig {
    /// Incoming connections still in their handshake (default 64).
    pub max_pending_incoming: u32,
    /// Outgoing dials at once (default 256: a DHT query dials many peers).
    pub max_pending_outgoing: u32,
    /// Established incoming connections (default 512).
    pub max_established_incoming: u32,
    /// Established connections in all (default 1024; the connection manager trims
    /// to `network.low_water` long before).
    pub max_established_total: u32,
    /// Established connections to one peer (default 8).
    pub max_established_per_peer: u32,
    /// New connections are refused while the process uses more than this percentage
    /// of the machine's memory (default 90; 0 turns the check off).
    pub max_memory_percent: u8,
    /// Bitswap streams all peers may have read at once (default 4096).
    pub bitswap_streams: usize,
    /// Bitswap streams one peer may have read at once (default 32).
    pub bitswap_streams_per_peer: usize,
    /// Bytes of Bitswap messages being read that one peer may hold (default 16 MiB).
    pub bitswap_buffer_per_peer: usize,
    /// Bytes of Bitswap messages being read from all peers (default 256 MiB).
    pub bitswap_buffer_total: usize,
    /// DHT provider records stored for one remote peer (default 8192).
    pub dht_provider_records_per_peer: usize,
    /// DHT provider records stored for all remote peers (default 131072).
    pub dht_provider_records_total: usize,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        let swarm = crate::p2p::Limits::default();
        let bitswap = crate::bitswap::Config::default();
        SwarmConfig {
            max_pending_incoming: swarm.pending_incoming,
            max_pending_outgoing: swarm.pending_outgoing,
            max_established_incoming: swarm.established_incoming,
            max_established_total: swarm.established_total,
            max_established_per_peer: swarm.established_per_peer,
            max_memory_percent: swarm.memory_percent,
            bitswap_streams: bitswap.inbound_streams,
            bitswap_streams_per_peer: bitswap.inbound_streams_per_peer,
            bitswap_buffer_per_peer: bitswap.buffers.per_peer,
            bitswap_buffer_total: bitswap.buffers.total,
            dht_provider_records_per_peer: swarm.provider_records_per_peer,
            dht_provider_records_total: swarm.provider_records_total,
        }
    }
}

/// One `[[models.trusted]]` entry: `publisher` (a peer id) may speak for `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedPublisher {
    pub name: String,
    pub publisher: String,
}

impl SwarmConfig {
    /// The swarm's share of these settings.
    pub fn p2p_limits(&self) -> crate::p2p::Limits {
        crate::p2p::Limits {
            pending_incoming: self.max_pending_incoming,
            pending_outgoing: self.max_pending_outgoing,
            established_incoming: self.max_established_incoming,
            established_total: self.max_established_total,
            established_per_peer: self.max_established_per_peer,
            memory_percent: self.max_memory_percent,
            provider_records_per_peer: self.dht_provider_records_per_peer,
            provider_records_total: self.dht_provider_records_total,
        }
    }

    /// Bitswap's settings: the defaults with these limits.
    pub fn bitswap(&self) -> crate::bitswap::Config {
        crate::bitswap::Config {
            inbound_streams: self.bitswap_streams,
            inbound_streams_per_peer: self.bitswap_streams_per_peer,
            buffers: crate::bitswap::BufferLimits {
                per_peer: self.bitswap_buffer_per_peer,
                total: self.bitswap_buffer_total,
            },
            ..crate::bitswap::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = NodeConfig::default();
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(toml::from_str::<NodeConfig>(&text).unwrap(), config);
    }

    #[test]
    fn an_empty_api_token_is_no_token() {
        let token = |text: &str| {
            let config: NodeConfig = toml::from_str(text).unwrap();
            config.network.api_token().map(str::to_owned)
        };
        assert_eq!(token(""), None);
        assert_eq!(token("[network]\napi_token = \"\"\n"), None);
        assert_eq!(token("[network]\napi_token = \"t\"\n"), Some("t".into()));
    }

    #[test]
    fn partial_files_fill_in_defaults() {
        let config: NodeConfig = toml::from_str("[datastore]\nstorage_max = 1000\n").unwrap();
        assert_eq!(config.datastore.storage_max, 1000);
        assert_eq!(config.datastore.high_bytes(), 900);
        assert_eq!(config.datastore.low_bytes(), 700);
        assert_eq!(config.import, ImportConfig::default());
    }

    #[test]
    fn http_sections_default_to_closed_api_and_open_gateway() {
        let config: NodeConfig = toml::from_str("").unwrap();
        assert!(config.api.allowed_origins.is_empty());
        assert_eq!(config.gateway.cors_allow_origin, "*");
        let config: NodeConfig = toml::from_str(
            "[api]\nallowed_origins = [\"http://app.example\"]\n[gateway]\ncors_allow_origin = \"\"\nwrite_timeout_secs = 0\n",
        )
        .unwrap();
        assert_eq!(config.api.allowed_origins, vec!["http://app.example"]);
        assert_eq!(config.gateway.cors_allow_origin, "");
        assert_eq!(config.gateway.write_timeout(), Duration::from_secs(1));
    }

    #[test]
    fn trusted_publishers_are_read_from_the_models_section() {
        let config: NodeConfig = toml::from_str(
            "[models]\ntrusted = [{ name = \"minilm\", publisher = \"12D3Koo\" }]\n",
        )
        .unwrap();
        assert_eq!(config.models.trusted[0].name, "minilm");
        assert_eq!(config.models.spot_check_share, DEFAULT_SPOT_CHECK_SHARE);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<NodeConfig>("[datastore]\nstorage_mux = 1\n").is_err());
    }
}
