//! The one address rule, shared by `plan validate` and the runtime's network mapping: which
//! addresses of a subnet a VM can hold (a source address is kept at the target only if it is
//! one of them).

use std::net::IpAddr;

use ipnet::IpNet;

/// A host address of `subnet`: inside it, and neither its network nor its broadcast address
/// (a /31 or /32, and IPv6's /127 or /128, has no such addresses to spare: all of it is usable).
pub fn usable(subnet: &IpNet, ip: IpAddr) -> bool {
    let point_to_point = subnet.prefix_len() >= subnet.max_prefix_len().saturating_sub(1);
    subnet.contains(&ip) && (point_to_point || (ip != subnet.network() && ip != subnet.broadcast()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn network_and_broadcast_are_not_usable() {
        let net: IpNet = "10.1.2.0/24".parse().unwrap();
        assert!(!usable(&net, "10.1.2.0".parse().unwrap()));
        assert!(!usable(&net, "10.1.2.255".parse().unwrap()));
        assert!(usable(&net, "10.1.2.1".parse().unwrap()));
        assert!(!usable(&net, "10.1.3.1".parse().unwrap()));
        let p2p: IpNet = "10.0.0.0/31".parse().unwrap();
        assert!(usable(&p2p, "10.0.0.0".parse().unwrap()));
        assert!(usable(&p2p, "10.0.0.1".parse().unwrap()));
    }

    proptest! {
        /// Over every IPv4 subnet and address: usable means inside, and at a /30 or wider not
        /// the first or the last address of the subnet.
        #[test]
        fn usable_is_inside_and_not_an_edge(a in any::<u32>(), prefix in 0u8..=32, ip in any::<u32>()) {
            let net = IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(a)), prefix).unwrap().trunc();
            let ip = IpAddr::from(std::net::Ipv4Addr::from(ip));
            let first = net.network();
            let last = net.broadcast();
            let expected = net.contains(&ip) && (prefix >= 31 || (ip != first && ip != last));
            prop_assert_eq!(usable(&net, ip), expected);
            // Every subnet of /30 or wider has at least one usable address, the one after its start.
            if prefix <= 30 {
                let next = IpAddr::from(std::net::Ipv4Addr::from(u32::from_be_bytes(match first { IpAddr::V4(v) => v.octets(), IpAddr::V6(_) => unreachable!() }) + 1));
                prop_assert!(usable(&net, next));
            }
        }
    }
}
