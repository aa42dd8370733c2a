//! What a node's DHT stores for others, against a raw Kademlia client on loopback: a
//! value record is refused, and provider records are kept up to the per-peer limit.

use std::time::Duration;

use futures::StreamExt;
use ipfs_accelerate_node::p2p::{self, P2p};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};

mod common;
use common::{loopback_swarm_limited, tcp_swarm};

const WAIT: Duration = Duration::from_secs(30);
const PER_PEER: usize = 5;

/// A Kademlia client that knows only `node`, on the test nodes' LAN DHT protocol.
fn kad_client(node: PeerId, addr: Multiaddr) -> Swarm<kad::Behaviour<MemoryStore>> {
    let mut swarm = tcp_swarm(|key| {
        let id = key.public().to_peer_id();
        let config = kad::Config::new(StreamProtocol::new("/ipfs/lan/kad/1.0.0"));
        kad::Behaviour::with_config(id, MemoryStore::new(id), config)
    });
    let mut base = addr;
    base.pop();
    swarm.behaviour_mut().add_address(&node, base);
    swarm
}

/// Drives `swarm` until query `id` reports its last step, returning that result.
async fn finished(
    swarm: &mut Swarm<kad::Behaviour<MemoryStore>>,
    id: kad::QueryId,
) -> kad::QueryResult {
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                id: done,
                result,
                step,
                ..
            }) = swarm.select_next_some().await
                && done == id
                && step.last
            {
                return result;
            }
        }
    })
    .await
    .expect("the query finished in time")
}

async fn providers_of(node: &P2p, key: &[u8], asker: PeerId) -> Vec<PeerId> {
    node.dht_answer(key.to_vec(), asker)
        .await
        .unwrap()
        .providers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_records_are_refused_and_provider_records_capped_per_peer() {
    let limits = p2p::Limits {
        provider_records_per_peer: PER_PEER,
        ..p2p::Limits::default()
    };
    let (node, addr) = loopback_swarm_limited(p2p::ConnectionLimits::default(), limits).await;
    let node_id = node.local_peer_id();
    let mut client = kad_client(node_id, addr);
    let client_id = *client.local_peer_id();

    // A value record sent straight to the node: it answers, and keeps nothing.
    let key = kad::RecordKey::new(&b"a value record".to_vec());
    let record = kad::Record::new(key.clone(), b"anything".to_vec());
    let id = client
        .behaviour_mut()
        .put_record_to(record, [node_id].into_iter(), kad::Quorum::One);
    finished(&mut client, id).await;
    let id = client.behaviour_mut().get_record(key);
    let got = finished(&mut client, id).await;
    assert!(
        matches!(
            got,
            kad::QueryResult::GetRecord(Err(kad::GetRecordError::NotFound { .. }))
        ),
        "{got:?}"
    );

    // Twice the per-peer limit of provider records: the node keeps the limit.
    let keys: Vec<Vec<u8>> = (0..2 * PER_PEER as u8).map(|i| vec![i; 8]).collect();
    for key in &keys {
        let id = client
            .behaviour_mut()
            .start_providing(kad::RecordKey::new(key))
            .unwrap();
        let result = finished(&mut client, id).await;
        assert!(
            matches!(result, kad::QueryResult::StartProviding(Ok(_))),
            "{result:?}"
        );
    }
    // The records are sent once a query ends, and read a moment later: wait for the
    // limit, then make one more round trip to the node before the final count.
    let stored = async || {
        let mut stored = 0;
        for key in &keys {
            if providers_of(&node, key, client_id)
                .await
                .contains(&client_id)
            {
                stored += 1;
            }
        }
        stored
    };
    tokio::time::timeout(WAIT, async {
        while stored().await < PER_PEER {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node stored provider records");
    let id = client
        .behaviour_mut()
        .get_providers(kad::RecordKey::new(&keys[0]));
    finished(&mut client, id).await;
    let stored = stored().await;
    assert_eq!(stored, PER_PEER);
}
