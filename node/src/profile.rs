//! Network profiles: presets of the `[network]` settings that decide which peers a
//! node meets (listen addresses, bootstrap peers, mDNS, the DHT). `init --profile`
//! writes one into the config; `daemon --profile` applies one for a run.
//!
//! The default is `lan`: a node finds peers on its own network and those it is told
//! of, and joins the public IPFS network only when asked (`public`), so a user who
//! wants a model swarm of their own machines never announces to the world by surprise.

use std::str::FromStr;

use crate::config::NetworkConfig;

/// Kubo's public DHT.
pub const PUBLIC_DHT: &str = "/ipfs/kad/1.0.0";
/// Kubo's LAN DHT: the same protocol among peers on private addresses.
pub const LAN_DHT: &str = "/ipfs/lan/kad/1.0.0";
/// Kubo v0.22's default bootstrap peers (`ipfs init`'s `Bootstrap`), with the QUIC
/// one in QUIC v1, the only QUIC libp2p speaks.
pub const KUBO_BOOTSTRAP: [&str; 6] = [
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
    "/ip4/104.131.131.82/udp/4001/quic-v1/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

/// Which peers a node meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// The public IPFS network: Kubo's bootstrap peers and public DHT, every IPv4
    /// interface on port 4001 (TCP and QUIC), mDNS, AutoNAT, relays (a relay service
    /// while publicly reachable, reservations behind a NAT) and hole punching.
    Public,
    /// The local network: mDNS and the LAN DHT, every IPv4 interface on port 4001, no
    /// bootstrap peers. NAT traversal as in `public`, for peers met through a relay.
    #[default]
    Lan,
    /// This machine only: loopback on a port the OS picks, no mDNS, no bootstrap
    /// peers, the LAN DHT, no NAT traversal (AutoNAT, relays, hole punching). For
    /// tests and trials.
    Test,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Public, Profile::Lan, Profile::Test];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Public => "public",
            Profile::Lan => "lan",
            Profile::Test => "test",
        }
    }

    /// Whether a node may take this profile: a private swarm's (one with a swarm key)
    /// never joins the public network.
    pub fn check(self, private: bool) -> Result<(), String> {
        if private && self == Profile::Public {
            return Err("a private swarm (swarm.key) does not join the public network".into());
        }
        Ok(())
    }

    /// Sets the settings this profile decides; the others (API, limits) stay.
    pub fn apply(self, network: &mut NetworkConfig) {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // IPv4 only: a listen address that cannot bind stops the daemon, and not every
        // host has IPv6; add `/ip6/::/...` to `network.listen` where it does.
        let every_interface = strings(&["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]);
        // NAT traversal is for peers on other networks; UPnP stays as configured
        // (off unless asked), as it multicasts on the LAN.
        let traverse_nats = self != Profile::Test;
        network.autonat = traverse_nats;
        network.relay_service = traverse_nats;
        network.relay_client = traverse_nats;
        network.hole_punching = traverse_nats;
        if !traverse_nats {
            network.upnp = false;
        }
        match self {
            Profile::Public => {
                network.listen = every_interface;
                network.bootstrap = strings(&KUBO_BOOTSTRAP);
                network.mdns = true;
                network.dht_protocol = PUBLIC_DHT.into();
            }
            Profile::Lan => {
                network.listen = every_interface;
                network.bootstrap = Vec::new();
                network.mdns = true;
                network.dht_protocol = LAN_DHT.into();
            }
            Profile::Test => {
                network.listen = strings(&["/ip4/127.0.0.1/tcp/0"]);
                network.bootstrap = Vec::new();
                network.mdns = false;
                network.dht_protocol = LAN_DHT.into();
            }
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown profile {s:?}: use public, lan or test"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(profile: Profile) -> NetworkConfig {
        let mut network = NetworkConfig::default();
        profile.apply(&mut network);
        network
    }

    #[test]
    fn the_default_config_is_the_lan_profile() {
        assert_eq!(applied(Profile::default()), NetworkConfig::default());
        assert_eq!(Profile::default(), Profile::Lan);
    }

    #[test]
    fn public_joins_kubos_network_and_only_public_does() {
        let public = applied(Profile::Public);
        assert_eq!(public.dht_protocol, "/ipfs/kad/1.0.0");
        assert_eq!(public.bootstrap.len(), 6);
        assert!(
            public
                .bootstrap
                .iter()
                .all(|a| a.parse::<libp2p::Multiaddr>().is_ok())
        );
        for other in [Profile::Lan, Profile::Test] {
            let network = applied(other);
            assert!(network.bootstrap.is_empty());
            assert_eq!(network.dht_protocol, LAN_DHT);
        }
    }

    #[test]
    fn test_stays_on_loopback_without_mdns_or_nat_traversal() {
        let test = applied(Profile::Test);
        assert_eq!(test.listen, ["/ip4/127.0.0.1/tcp/0"]);
        assert!(!test.mdns);
        assert!(!test.autonat && !test.relay_service && !test.relay_client);
        assert!(!test.hole_punching && !test.upnp);
    }

    #[test]
    fn other_profiles_traverse_nats_but_never_turn_upnp_on() {
        for profile in [Profile::Public, Profile::Lan] {
            let network = applied(profile);
            assert!(network.autonat && network.relay_service && network.relay_client);
            assert!(network.hole_punching);
            assert!(!network.upnp, "{profile:?}");
        }
    }

    #[test]
    fn a_private_swarm_takes_any_profile_but_public() {
        assert!(Profile::Public.check(true).is_err());
        assert!(Profile::Public.check(false).is_ok());
        assert!(Profile::Lan.check(true).is_ok() && Profile::Test.check(true).is_ok());
    }

    #[test]
    fn profiles_parse_by_name_and_nothing_else() {
        for profile in Profile::ALL {
            assert_eq!(profile.name().parse::<Profile>(), Ok(profile));
        }
        assert!("Public".parse::<Profile>().is_err());
        assert!("".parse::<Profile>().is_err());
    }
}
