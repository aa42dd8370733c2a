//! Gossipsub peer scoring against a raw gossipsub peer on loopback: a peer whose
//! messages on a model topic fail validation is graylisted.

use std::time::Duration;

use futures::StreamExt;
use ipfs_accelerate_protocol::manifest::MODELS_TOPIC;
use libp2p::gossipsub;

mod common;
use common::{loopback_swarm, tcp_swarm};

const WAIT: Duration = Duration::from_secs(30);
/// The node's graylist threshold: below it, everything a peer sends is ignored.
const GRAYLIST_THRESHOLD: f64 = -80.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_invalid_announcements_is_graylisted() {
    let (node, addr) = loopback_swarm().await;
    node.pubsub_subscribe(MODELS_TOPIC.into()).await.unwrap();
    let mut swarm = tcp_swarm(|key| {
        gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::Config::default(),
        )
        .unwrap()
    });
    let bad = *swarm.local_peer_id();
    let topic = gossipsub::IdentTopic::new(MODELS_TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm.dial(addr).unwrap();
    // Wait until the node's subscription reached the bad peer, so its messages go out.
    tokio::time::timeout(WAIT, async {
        loop {
            swarm.select_next_some().await;
            let hash = topic.hash();
            if swarm
                .behaviour()
                .all_peers()
                .any(|(_, topics)| topics.contains(&&hash))
            {
                break;
            }
        }
    })
    .await
    .expect("the node's subscription arrived");
    for i in 0..5u8 {
        swarm
            .behaviour_mut()
            .publish(topic.clone(), vec![0xff, i])
            .unwrap();
    }
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    tokio::time::timeout(WAIT, async {
        loop {
            let score = node.pubsub_peer_score(bad).await.unwrap();
            if score.is_some_and(|s| s < GRAYLIST_THRESHOLD) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the peer was not graylisted"));
    driver.abort();
}
