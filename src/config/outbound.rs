//! Where a guest may reach over HTTP: a function's `allowed_outbound_hosts` (Spin's syntax:
//! `scheme://host[:port]`, with `*` for any scheme, host or port and `*.` for any
//! subdomain) and the host's `block_networks`, the addresses no name may resolve to.
//!
//! Hand-written: the entries are not URLs (`*` is no valid host), and the few rules are
//! simpler to state here than to bend a URL parser to.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: SchemePattern,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemePattern {
    Any,
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host.
    Any,
    /// `example.com`, lowercase.
    Name(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Subdomains(String),
    /// `127.0.0.1` or `[::1]`: that address, exempt from `block_networks`.
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port written: the scheme's own (80, 443).
    Default,
    Any,
    Exact(u16),
}

/// What an allowlist says of one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// No entry matches.
    Denied,
    /// An entry matches; its addresses are still checked against `block_networks`.
    Allowed,
    /// An entry written as this very IP address matches: the operator's explicit choice,
    /// exempt from `block_networks`.
    AllowedAddress,
}

impl AllowedHost {
    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> Option<Permit> {
        let scheme_ok = match self.scheme {
            SchemePattern::Any => scheme == "http" || scheme == "https",
            SchemePattern::Http => scheme == "http",
            SchemePattern::Https => scheme == "https",
        };
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let port = port.unwrap_or(default_port);
        let port_ok = match self.port {
            PortPattern::Default => port == default_port,
            PortPattern::Any => true,
            PortPattern::Exact(p) => port == p,
        };
        if !scheme_ok || !port_ok {
            return None;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let literal = host.parse::<IpAddr>().ok();
        match &self.host {
            HostPattern::Any => Some(Permit::Allowed),
            HostPattern::Ip(ip) => (literal.map(|l| l.to_canonical()) == Some(ip.to_canonical()))
                .then_some(Permit::AllowedAddress),
            HostPattern::Name(name) => {
                (literal.is_none() && host.eq_ignore_ascii_case(name)).then_some(Permit::Allowed)
            }
            HostPattern::Subdomains(suffix) => {
                let host = host.to_ascii_lowercase();
                let under = host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
                (literal.is_none() && under).then_some(Permit::Allowed)
            }
        }
    }
}

/// What `allowed` says of a request to `scheme://host:port`; `host` as in a URL (an IPv6
/// address may keep its brackets).
pub fn permit(allowed: &[AllowedHost], scheme: &str, host: &str, port: Option<u16>) -> Permit {
    let mut best = Permit::Denied;
    for entry in allowed {
        match entry.matches(scheme, host, port) {
            Some(Permit::AllowedAddress) => return Permit::AllowedAddress,
            Some(p) => best = p,
            None => {}
        }
    }
    best
}

impl FromStr for AllowedHost {
    type Err = String;

    fn from_str(text: &str) -> Result<AllowedHost, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "{text:?} is not a URL: write scheme://host[:port], such as https://api.example.com"
            ));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => SchemePattern::Http,
            "https" => SchemePattern::Https,
            "*" => SchemePattern::Any,
            other => {
                return Err(format!(
                    "{text:?}: unknown scheme {other:?}: write http, https or *"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?}: write only scheme://host[:port], without a path, query or user"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((address, after)) = v6.split_once(']') else {
                return Err(format!("{text:?}: an IPv6 address needs its closing ]"));
            };
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("{text:?}: write the port after the address as [::1]:8080")
                })?),
            };
            let ip = address
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{text:?}: {address:?} is not an IPv6 address"))?;
            (HostPattern::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            (host_pattern(text, host)?, port)
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortPattern::Exact(n),
                _ => {
                    return Err(format!(
                        "{text:?}: {p:?} is not a port: write a number from 1 to 65535, or *"
                    ));
                }
            },
        };
        Ok(AllowedHost { scheme, host, port })
    }
}

fn host_pattern(text: &str, host: &str) -> Result<HostPattern, String> {
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip));
    }
    let (suffix, wildcard) = match host.strip_prefix("*.") {
        Some(suffix) => (suffix, true),
        None => (host, false),
    };
    if suffix.contains('*') {
        return Err(format!(
            "{text:?}: a wildcard goes only first, as a whole label (https://*.example.com), or alone (https://*)"
        ));
    }
    let valid = !suffix.is_empty()
        && suffix.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        return Err(format!("{text:?}: {host:?} is not a host name"));
    }
    let name = suffix.to_ascii_lowercase();
    Ok(if wildcard {
        HostPattern::Subdomains(name)
    } else {
        HostPattern::Name(name)
    })
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            SchemePattern::Any => "*",
            SchemePattern::Http => "http",
            SchemePattern::Https => "https",
        })?;
        f.write_str("://")?;
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Subdomains(n) => write!(f, "*.{n}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            PortPattern::Default => Ok(()),
            PortPattern::Any => f.write_str(":*"),
            PortPattern::Exact(p) => write!(f, ":{p}"),
        }
    }
}

/// The networks that `[host] block_networks` names: no name a guest calls (or a callback
/// goes to) may resolve into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNetworks(Vec<IpNet>);

/// The default of `block_networks`.
const DEFAULT_BLOCK_NETWORKS: [&str; 3] = ["private", "loopback", "link-local"];

impl BlockNetworks {
    /// Reads the entries: the names `private`, `loopback`, `link-local`, or CIDRs such as
    /// `203.0.113.0/24` (a lone address blocks just it). The error names the entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<BlockNetworks, (usize, String)> {
        let mut nets = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref().trim();
            let named: &[&str] = match entry {
                "private" => &[
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "fc00::/7",
                ],
                // 0.0.0.0 and :: reach this machine too, when connected to.
                "loopback" => &["127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128"],
                "link-local" => &["169.254.0.0/16", "fe80::/10"],
                _ => &[],
            };
            if !named.is_empty() {
                nets.extend(
                    named
                        .iter()
                        .map(|n| n.parse::<IpNet>().expect("a valid CIDR")),
                );
                continue;
            }
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        i,
                        format!(
                            "{entry:?} is neither a network name (private, loopback, link-local) nor a CIDR such as 10.0.0.0/8"
                        ),
                    )
                })?;
            nets.push(net.trunc());
        }
        Ok(BlockNetworks(nets))
    }

    /// Whether `ip` is in a blocked network (an IPv4 address written as IPv6, such as
    /// `::ffff:127.0.0.1`, counts as the IPv4 one).
    pub fn blocks(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl Default for BlockNetworks {
    fn default() -> BlockNetworks {
        BlockNetworks::parse(&DEFAULT_BLOCK_NETWORKS).expect("the default networks parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> Vec<AllowedHost> {
        entries.iter().map(|e| e.parse().unwrap()).collect()
    }

    fn says(entries: &[&str], url: &str) -> Permit {
        let uri: http::Uri = url.parse().unwrap();
        permit(
            &allowed(entries),
            uri.scheme_str().unwrap(),
            uri.host().unwrap(),
            uri.port_u16(),
        )
    }

    #[test]
    fn outbound_none_allowed_by_default() {
        assert_eq!(says(&[], "https://api.example.com/"), Permit::Denied);
    }

    #[test]
    fn outbound_allowlist_matches_scheme_host_and_port() {
        let list = ["https://api.example.com"];
        assert_eq!(says(&list, "https://api.example.com/x?y"), Permit::Allowed);
        assert_eq!(says(&list, "https://API.example.com:443/"), Permit::Allowed);
        assert_eq!(says(&list, "http://api.example.com/"), Permit::Denied);
        assert_eq!(says(&list, "https://api.example.com:8443/"), Permit::Denied);
        assert_eq!(says(&list, "https://example.com/"), Permit::Denied);
        assert_eq!(says(&list, "https://evil-api.example.com/"), Permit::Denied);
        let list = ["http://localhost:9000", "*://any.test:*"];
        assert_eq!(says(&list, "http://localhost:9000/"), Permit::Allowed);
        assert_eq!(says(&list, "http://localhost/"), Permit::Denied);
        assert_eq!(says(&list, "https://any.test:1/"), Permit::Allowed);
        assert_eq!(says(&list, "http://any.test/"), Permit::Allowed);
    }

    #[test]
    fn outbound_wildcard_matches_subdomains_only() {
        let list = ["https://*.example.org"];
        assert_eq!(says(&list, "https://a.example.org/"), Permit::Allowed);
        assert_eq!(says(&list, "https://a.b.example.org/"), Permit::Allowed);
        assert_eq!(says(&list, "https://example.org/"), Permit::Denied);
        assert_eq!(says(&list, "https://aexample.org/"), Permit::Denied);
        assert_eq!(says(&list, "https://example.org.evil.com/"), Permit::Denied);
        let list = ["https://*"];
        assert_eq!(says(&list, "https://anything.at.all/"), Permit::Allowed);
        assert_eq!(says(&list, "https://10.0.0.1/"), Permit::Allowed);
        assert_eq!(says(&list, "http://anything.at.all/"), Permit::Denied);
    }

    #[test]
    fn outbound_ip_literal_entry_is_exempt_from_block_networks() {
        let list = ["http://127.0.0.1:9000", "http://[::1]:9000"];
        assert_eq!(
            says(&list, "http://127.0.0.1:9000/"),
            Permit::AllowedAddress
        );
        assert_eq!(says(&list, "http://[::1]:9000/"), Permit::AllowedAddress);
        assert_eq!(says(&list, "http://127.0.0.2:9000/"), Permit::Denied);
        assert_eq!(says(&list, "http://localhost:9000/"), Permit::Denied);
        // A name entry never matches an address, even one it resolves to.
        assert_eq!(
            says(&["http://localhost"], "http://127.0.0.1/"),
            Permit::Denied
        );
    }

    #[test]
    fn outbound_bad_entries_say_why() {
        let err = |text: &str| text.parse::<AllowedHost>().unwrap_err();
        assert!(err("api.example.com").contains("is not a URL"));
        assert!(err("ftp://example.com").contains("unknown scheme \"ftp\""));
        assert!(err("https://api.*.example.com").contains("a wildcard goes only first"));
        assert!(err("https://*example.com").contains("a wildcard goes only first"));
        assert!(err("https://example.com/path").contains("without a path"));
        assert!(err("https://example.com:http").contains("is not a port"));
        assert!(err("https://example.com:0").contains("is not a port"));
        assert!(err("https://[::1").contains("closing ]"));
        assert!(err("https://exa mple.com").contains("is not a host name"));
        for good in [
            "https://api.example.com",
            "https://*.example.org",
            "http://127.0.0.1:9000",
            "*://*:*",
            "http://[::1]:8080",
        ] {
            assert_eq!(good.parse::<AllowedHost>().unwrap().to_string(), good);
        }
    }

    #[test]
    fn block_networks_names_and_cidrs() {
        let default = BlockNetworks::default();
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.31.255.255",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(default.blocks(blocked.parse().unwrap()), "{blocked}");
        }
        for open in ["93.184.216.34", "172.32.0.1", "2606:4700::1"] {
            assert!(!default.blocks(open.parse().unwrap()), "{open}");
        }
        let custom = BlockNetworks::parse(&["203.0.113.0/24", "198.51.100.7"]).unwrap();
        assert!(custom.blocks("203.0.113.9".parse().unwrap()));
        assert!(custom.blocks("198.51.100.7".parse().unwrap()));
        assert!(!custom.blocks("127.0.0.1".parse().unwrap()));
        let (at, why) = BlockNetworks::parse(&["private", "intranet"]).unwrap_err();
        assert_eq!(at, 1);
        assert!(why.contains("\"intranet\" is neither a network name"));
    }
}
