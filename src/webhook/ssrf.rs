//! Guards per-watch webhook URLs (which come from clients) against server-side request
//! forgery: owns the "is this address public?" rule and the DNS resolver that enforces it.
//!
//! Two pieces, because reqwest resolves names through a pluggable resolver but never asks
//! the resolver about IP-literal hosts:
//! - [`check_url`] refuses non-http(s) schemes and IP-literal hosts that are not public;
//!   call it before every send to a per-watch URL.
//! - [`PublicOnlyResolver`] resolves names and drops non-public addresses. reqwest connects
//!   only to the addresses the resolver returns, so the address checked is the address
//!   connected to: a name that re-resolves to a private address later (DNS rebinding)
//!   gains nothing.
//!
//! A client for per-watch URLs should be built with
//! `.dns_resolver(Arc::new(PublicOnlyResolver))`, `.redirect(reqwest::redirect::Policy::none())`
//! (a redirect would reach a URL that `check_url` never saw) and `.no_proxy()` (through a
//! proxy, reqwest resolves the proxy's name, not the target's, and the check is skipped).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a per-watch URL or one of its addresses was refused.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    #[error("webhook URL scheme `{0}` is not allowed (only http and https)")]
    Scheme(String),
    #[error("webhook URL has no host")]
    NoHost,
    #[error("webhook URL host {0} is a non-public address")]
    NonPublicLiteral(IpAddr),
    #[error("host `{host}` resolves only to non-public addresses ({})", join(.addrs))]
    NonPublicOnly { host: String, addrs: Vec<IpAddr> },
    #[error("host `{0}` resolved to no addresses")]
    NoAddresses(String),
    #[error("could not resolve host `{host}`: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

fn join(addrs: &[IpAddr]) -> String {
    let mut out = String::new();
    for (i, a) in addrs.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{a}");
    }
    out
}

/// Refuses a per-watch URL that is not http(s), has no host, or names a non-public IP
/// literal. Names are left to [`PublicOnlyResolver`], which sees what they resolve to.
pub fn check_url(url: &url::Url) -> Result<(), SsrfError> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(SsrfError::Scheme(other.to_owned())),
    }
    // The url crate has already normalised odd IPv4 spellings (`0x7f.1`, `2130706433`)
    // into `Host::Ipv4`, so they cannot pass as names.
    let ip = match url.host() {
        None => return Err(SsrfError::NoHost),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(SsrfError::NonPublicLiteral(ip))
    }
}

/// A reqwest resolver that resolves with the system resolver (tokio's `lookup_host`) and
/// returns only public addresses; if none are left it fails, naming what it found.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest replaces it with the URL's port or the scheme's default.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| SsrfError::Lookup {
                    host: host.clone(),
                    source,
                })?
                .collect();
            let public = public_only(&host, found)?;
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Keeps the public addresses of `host`'s resolution; an error if none are left.
pub fn public_only(host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, SsrfError> {
    if found.is_empty() {
        return Err(SsrfError::NoAddresses(host.to_owned()));
    }
    let (public, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
        found.into_iter().partition(|a| is_public(a.ip()));
    if public.is_empty() {
        let mut addrs: Vec<IpAddr> = refused.iter().map(SocketAddr::ip).collect();
        addrs.dedup();
        return Err(SsrfError::NonPublicOnly {
            host: host.to_owned(),
            addrs,
        });
    }
    if !refused.is_empty() {
        tracing::debug!(
            host,
            ?refused,
            "dropped non-public addresses of webhook host"
        );
    }
    Ok(public)
}

/// True for addresses that are globally routable unicast: a per-watch webhook may go there.
/// Conservative on purpose: special-purpose ranges are refused even where a few of their
/// addresses are technically global, since no webhook receiver lives there.
#[must_use]
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 ranges that are not globally reachable unicast (IANA special-purpose registry).
const V4_REFUSED: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::UNSPECIFIED, 8),           // "this network", incl. unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT shared address space
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (cloud metadata lives here)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, incl. broadcast 255.255.255.255
];

/// IPv6 ranges inside global unicast `2000::/3` that are still not public.
const V6_REFUSED_IN_GLOBAL: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments: Teredo 2001::/32 (its IPv4 is obfuscated, so refuse it
    // whole), benchmarking 2001:2::/48, ORCHID.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation (RFC 9637)
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !V4_REFUSED.iter().any(|&(net, len)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        bits & mask == u32::from(net)
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // Forms that carry an IPv4 address, which is what would really be reached:
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (deprecated compatible), 64:ff9b::a.b.c.d (NAT64).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(low_v4(seg));
    }
    // 2002:AABB:CCDD::/48 is 6to4 for AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        let [a, b] = seg[1].to_be_bytes();
        let [c, d] = seg[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Only 2000::/3 is global unicast. Outside it: 64:ff9b:1::/48 local NAT64, 100::/64
    // discard, 5f00::/16 SRv6, fc00::/7 unique-local, fe80::/10 link-local, fec0::/10
    // site-local, ff00::/8 multicast, and unassigned space.
    if seg[0] & 0xe000 != 0x2000 {
        return false;
    }
    let bits = u128::from(ip);
    !V6_REFUSED_IN_GLOBAL.iter().any(|&(net, len)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        bits & mask == u128::from(net)
    })
}

fn low_v4(seg: [u16; 8]) -> Ipv4Addr {
    let [a, b] = seg[6].to_be_bytes();
    let [c, d] = seg[7].to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    fn assert_refused(addrs: &[&str]) {
        for a in addrs {
            assert!(!is_public(ip(a)), "{a} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255", // just below CGNAT
            "100.128.0.0",    // just above CGNAT
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
        ] {
            assert!(is_public(ip(a)), "{a} should be public");
        }
    }

    #[test]
    fn v4_loopback_private_link_local_unspecified() {
        assert_refused(&[
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "192.168.255.255",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
        ]);
    }

    #[test]
    fn v4_special_purpose() {
        assert_refused(&[
            "255.255.255.255", // broadcast
            "224.0.0.1",       // multicast
            "239.255.255.250",
            "240.0.0.1", // reserved
            "192.0.2.1", // documentation
            "198.51.100.7",
            "203.0.113.9",
            "100.64.0.1", // CGNAT
            "100.127.255.255",
            "192.0.0.8",  // IETF protocol assignments
            "198.18.0.1", // benchmarking
            "198.19.255.255",
            "192.88.99.1", // 6to4 relay anycast
        ]);
    }

    #[test]
    fn v6_special_purpose() {
        assert_refused(&[
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1", // unique-local
            "fd12:3456::1",
            "fec0::1", // site-local
            "ff02::1", // multicast
            "ff0e::1",
            "2001:db8::1", // documentation
            "3fff::1",
            "100::1",       // discard
            "2001::1",      // Teredo
            "2001:2::1",    // benchmarking
            "64:ff9b:1::1", // local-use NAT64
            "5f00::1",      // SRv6
            "4000::1",      // outside 2000::/3
        ]);
    }

    #[test]
    fn v6_forms_embedding_v4_are_checked_on_the_v4() {
        assert_refused(&[
            "::ffff:127.0.0.1", // mapped
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1", // compatible
            "::10.0.0.1",
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "2002:7f00:1::1",     // 6to4 of 127.0.0.1
            "2002:c0a8:101::1",   // 6to4 of 192.168.1.1
        ]);
    }

    #[test]
    fn check_url_refuses_private_literals_and_other_schemes() {
        for u in [
            "http://127.0.0.1/hook",
            "http://127.0.0.1:8080/hook",
            "https://10.0.0.5/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]:9000/",
            "http://0x7f.1/",     // the url crate normalises this to 127.0.0.1
            "http://2130706433/", // and this
            "http://0/",
        ] {
            let url = url::Url::parse(u).expect("test URL parses");
            let err = check_url(&url).expect_err(u);
            assert!(matches!(err, SsrfError::NonPublicLiteral(_)), "{u}: {err}");
            assert!(err.to_string().contains("non-public"), "{u}: {err}");
        }
        for u in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://1.1.1.1/",
        ] {
            let url = url::Url::parse(u).expect("test URL parses");
            let err = check_url(&url).expect_err(u);
            assert!(matches!(err, SsrfError::Scheme(_)), "{u}: {err}");
        }
    }

    #[test]
    fn check_url_accepts_public_literals_and_names() {
        for u in [
            "https://8.8.8.8/hook",
            "http://[2606:4700:4700::1111]:8443/x",
            "https://hooks.example.com/in",
            "http://localhost/", // a name: the resolver refuses it at connect time
        ] {
            let url = url::Url::parse(u).expect("test URL parses");
            assert!(check_url(&url).is_ok(), "{u}");
        }
    }

    #[test]
    fn public_only_filters_and_names_refused_addresses() {
        let sa = |s: &str| SocketAddr::new(ip(s), 0);
        let kept = public_only("mixed", vec![sa("10.0.0.1"), sa("8.8.8.8"), sa("::1")]).unwrap();
        assert_eq!(kept, vec![sa("8.8.8.8")]);

        let err = public_only("evil.test", vec![sa("127.0.0.1"), sa("::1")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("evil.test"), "{msg}");
        assert!(
            msg.contains("resolves only to non-public addresses"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1") && msg.contains("::1"), "{msg}");

        let err = public_only("empty.test", vec![]).unwrap_err();
        assert!(matches!(err, SsrfError::NoAddresses(_)), "{err}");
    }

    #[tokio::test]
    async fn resolver_refuses_localhost() {
        for host in ["localhost", "127.0.0.1", "::1"] {
            let name: Name = host.parse().expect("valid name");
            let err = match PublicOnlyResolver.resolve(name).await {
                Ok(addrs) => panic!("{host} resolved to {:?}", addrs.collect::<Vec<_>>()),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(
                msg.contains("resolves only to non-public addresses"),
                "{msg}"
            );
            assert!(msg.contains(host), "{msg}");
        }
    }

    /// End to end through reqwest: a client built as the dispatcher builds it cannot reach
    /// a server listening on loopback by name, and the error says why.
    #[tokio::test]
    async fn reqwest_client_with_resolver_cannot_reach_localhost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(PublicOnlyResolver))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let err = client
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .expect_err("must not connect to loopback");
        // What the delivery's `last_error` would say.
        let said = crate::upstream::describe(&err.without_url());
        assert!(
            said.starts_with("connection failed: ")
                && said.contains("resolves only to non-public addresses"),
            "{said}"
        );
        // And nothing reached the listener.
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept());
        assert!(
            accepted.await.is_err(),
            "a connection reached the loopback listener"
        );
    }
}
