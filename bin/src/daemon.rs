//! `ipfs-accelerate daemon`: starts the node and its HTTP API, and runs until Ctrl-C,
//! SIGTERM or `ipfs-accelerate shutdown`.

use std::sync::Arc;

use anyhow::{Context, Result};
use ipfs_accelerate_node::engine::Placement;
use ipfs_accelerate_node::infer::ServeConfig;
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::repo::Repo;
use ipfs_accelerate_node::{Node, api, gateway};

use crate::cli::DaemonArgs;

pub(crate) fn run(repo: Repo, args: DaemonArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(repo, args))
}

async fn serve(repo: Repo, args: DaemonArgs) -> Result<()> {
    let api_addr = args
        .api
        .clone()
        .unwrap_or_else(|| repo.config().network.api.clone());
    let gateway_addr = args
        .gateway
        .clone()
        .unwrap_or_else(|| repo.config().network.gateway.clone());
    let openai_addr = args
        .openai
        .clone()
        .unwrap_or_else(|| repo.config().network.openai.clone());
    let api_file = Repo::api_file(repo.path());
    let gateway_file = Repo::gateway_file(repo.path());
    let overrides = NetworkOverrides {
        listen: args.listen,
        bootstrap: args.bootstrap,
        no_mdns: args.no_mdns,
        dht_protocol: args.dht_protocol,
        profile: args.profile,
    };
    let serve_on = Placement::new(args.serve_device.parse()?, args.serve_precision.parse()?)?;
    let allow = if args.allow_peer.is_empty() {
        None
    } else {
        Some(
            args.allow_peer
                .iter()
                .map(|p| p.parse().with_context(|| format!("invalid peer id {p:?}")))
                .collect::<Result<_>>()?,
        )
    };
    let serve_config = ServeConfig {
        queue_capacity: args.serve_queue.max(1),
        max_batch_rows: args.serve_batch.max(1),
        workers: args.serve_workers.max(1),
        allow,
        ..ServeConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(&api_addr)
        .await
        .with_context(|| format!("binding the API to {api_addr}"))?;
    let bound = api::local_addr(&listener)?;
    let gateway_listener = tokio::net::TcpListener::bind(&gateway_addr)
        .await
        .with_context(|| format!("binding the gateway to {gateway_addr}"))?;
    let gateway_bound = gateway_listener.local_addr()?;
    let openai_listener = match openai_addr.is_empty() {
        true => None,
        false => Some(
            tokio::net::TcpListener::bind(&openai_addr)
                .await
                .with_context(|| format!("binding OpenAI's API to {openai_addr}"))?,
        ),
    };
    let swarm_key = repo.swarm_key();
    let node = Arc::new(Node::start(repo, overrides, serve_config).await?);
    if let Some(key) = swarm_key {
        // Kubo's words, where scripts may look for them.
        println!("Swarm is limited to private network of peers with the swarm key");
        println!("Swarm key fingerprint: {}", key.fingerprint());
    }
    for model in &args.serve {
        let root = node.resolve_model(model)?;
        node.serve_model(root, serve_on)
            .await
            .with_context(|| format!("serving {model}"))?;
        println!("Serving {model} ({root}) on {serve_on}");
    }
    let addrs = node
        .p2p()
        .wait_listening(std::time::Duration::from_secs(10))
        .await?;
    for addr in &addrs {
        println!("Swarm listening on {addr}");
    }
    println!("Peer ID: {}", node.peer_id());
    println!(
        "RPC API server listening on /ip4/{}/tcp/{}",
        bound.ip(),
        bound.port()
    );
    println!(
        "Gateway server listening on /ip4/{}/tcp/{}",
        gateway_bound.ip(),
        gateway_bound.port()
    );
    if let Some(listener) = &openai_listener {
        println!(
            "OpenAI API server listening on {}",
            gateway_url(listener.local_addr()?)
        );
    }
    // Like Kubo's $IPFS_PATH/api: tells commands where the daemon holding the repo is.
    std::fs::write(
        &api_file,
        format!("/ip4/{}/tcp/{}", bound.ip(), bound.port()),
    )
    .with_context(|| format!("writing {}", api_file.display()))?;
    // Like Kubo's $IPFS_PATH/gateway: tells `doctor` which gateway to ask.
    std::fs::write(&gateway_file, gateway_url(gateway_bound))
        .with_context(|| format!("writing {}", gateway_file.display()))?;
    println!("Daemon is ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(api::serve(
        node.clone(),
        listener,
        stop_rx.clone(),
        stop_tx.clone(),
    ));
    let gateway_server = tokio::spawn(gateway::serve(
        node.clone(),
        gateway_listener,
        stop_rx.clone(),
    ));
    let openai_server = openai_listener
        .map(|listener| tokio::spawn(api::serve_openai(node.clone(), listener, stop_rx.clone())));
    let mut api_stop = stop_rx.clone();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
        _ = api_stop.wait_for(|stopped| *stopped) => {}
    }
    println!("Received interrupt, shutting down...");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = gateway_server.await;
    if let Some(server) = openai_server {
        let _ = server.await;
    }
    node.shutdown().await;
    let _ = std::fs::remove_file(&api_file);
    let _ = std::fs::remove_file(&gateway_file);
    Ok(())
}

/// An HTTP server's URL for local clients: a wildcard address becomes loopback, as
/// Kubo writes the gateway's.
fn gateway_url(bound: std::net::SocketAddr) -> String {
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}
