//! Client addresses, as every limit, list and log sees them.
//!
//! - Canonical form: an IPv4 client reaching a dual-stack socket (bound to `[::]`)
//!   arrives as `::ffff:a.b.c.d`; it is the IPv4 address `a.b.c.d` everywhere (rate
//!   limits, trusted proxies, a session's last IP), never an IPv6 one.
//! - Source: what one client holds. An IPv4 address is one source; an IPv6 host
//!   usually holds a whole /64, so its /64 is one source.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

/// `ip` with an IPv4-mapped IPv6 address turned into the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The source `ip` belongs to: the IPv4 address itself, or an IPv6 address's /64
/// (`2001:db8:1:2::/64`).
pub fn source(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            format!("{}/64", Ipv6Addr::from(octets))
        }
    }
}

/// An address range, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a range of one.
/// Kept and compared in canonical form (`canonical`): a range written as IPv4-mapped
/// IPv6 (`::ffff:10.0.0.0/104`) is the IPv4 range, and an IPv4 client seen through a
/// dual-stack socket is matched as the IPv4 address it is. The range arithmetic is
/// `ipnet`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn parse(raw: &str) -> Option<Self> {
        let net = match raw.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => IpNet::from(raw.parse::<IpAddr>().ok()?),
        };
        Some(Self(match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?),
                None => net,
            },
            _ => net,
        }))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4_and_ipv6_hosts_are_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(canonical(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(source(ip("::ffff:192.0.2.7")), "192.0.2.7");
        assert_eq!(source(ip("192.0.2.8")), "192.0.2.8");
        assert_eq!(source(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(
            source(ip("2001:db8:1:2::9")),
            source(ip("2001:db8:1:2:ff::1"))
        );
    }
}
