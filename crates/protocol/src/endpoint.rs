//! Parsing of ZeroMQ TCP endpoints as the command lines take them.

/// The error for an endpoint or an endpoint list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint {endpoint:?}: {reason}; expected tcp://HOST:PORT, such as tcp://127.0.0.1:20000")]
    Invalid { endpoint: String, reason: &'static str },
    #[error("empty item at position {position} in the endpoint list {list:?}; separate endpoints with single commas")]
    EmptyItem { list: String, position: usize },
}

/// Checks one `tcp://HOST:PORT` endpoint and returns it without surrounding white space.
///
/// HOST is an IPv4 address, a bracketed IPv6 address or a host name; PORT is 0 to 65535.
pub fn parse_endpoint(text: &str) -> Result<String, EndpointError> {
    let endpoint = text.trim();
    let invalid = |reason| EndpointError::Invalid { endpoint: endpoint.to_owned(), reason };
    let rest = endpoint.strip_prefix("tcp://").ok_or_else(|| invalid("it does not start with tcp://"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("it has no :PORT"))?;
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    let host_is_valid = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|address| address.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if !host_is_valid {
        return Err(invalid("the host is not an address or a host name"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(invalid("the port is not a number from 0 to 65535"));
    }
    Ok(endpoint.to_owned())
}

/// Parses a comma-separated list of endpoints, such as
/// `tcp://127.0.0.1:20000,tcp://127.0.0.1:20001`. An empty string is an empty list; an empty
/// item (two commas in a row, or a trailing comma) is an error.
pub fn parse_peer_list(list: &str) -> Result<Vec<String>, EndpointError> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .enumerate()
        .map(|(index, item)| {
            if item.trim().is_empty() {
                Err(EndpointError::EmptyItem { list: list.to_owned(), position: index + 1 })
            } else {
                parse_endpoint(item)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_list_accepts_one_or_many() {
        assert_eq!(parse_peer_list(""), Ok(vec![]));
        assert_eq!(parse_peer_list("tcp://127.0.0.1:20000"), Ok(vec!["tcp://127.0.0.1:20000".to_owned()]));
        assert_eq!(
            parse_peer_list("tcp://127.0.0.1:20000, tcp://db2.example:20001"),
            Ok(vec!["tcp://127.0.0.1:20000".to_owned(), "tcp://db2.example:20001".to_owned()])
        );
        assert!(parse_endpoint("tcp://[::1]:5555").is_ok());
    }

    #[test]
    fn peer_list_names_the_empty_item() {
        let error = parse_peer_list("tcp://127.0.0.1:20000,,tcp://127.0.0.1:20001").unwrap_err();
        assert_eq!(error, EndpointError::EmptyItem {
            list: "tcp://127.0.0.1:20000,,tcp://127.0.0.1:20001".to_owned(),
            position: 2
        });
        assert!(parse_peer_list("tcp://127.0.0.1:20000,").is_err());
    }

    #[test]
    fn endpoint_errors_name_the_value() {
        for bad in ["127.0.0.1:20000", "udp://1.2.3.4:5", "tcp://:5", "tcp://host", "tcp://host:99999", "tcp://ho st:1", "tcp://[zz]:1", "tcp://*:21000"] {
            let error = parse_endpoint(bad).unwrap_err();
            assert!(error.to_string().contains(bad.trim()), "{error} does not name {bad}");
        }
    }
}
