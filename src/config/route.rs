//! HTTP routes: `/`, literal segments, `{name}` segments and a final `*`; matching, and the
//! order in which routes are tried (most specific first).

/// A route such as `/users/{id}/files/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub text: String,
    pub segments: Vec<Segment>,
    /// The route ends in `*` and matches any rest of the path.
    pub tail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// Parses a route: `/`, literal segments, `{name}` segments and a final `*`.
pub fn parse_route(text: &str) -> Result<Route, String> {
    if !text.starts_with('/') {
        return Err(format!("route {text:?} must start with '/'"));
    }
    let mut segments = Vec::new();
    let mut tail = false;
    let parts: Vec<&str> = text[1..].split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            if last {
                break; // a trailing slash, or the route "/"
            }
            return Err(format!("route {text:?} has an empty segment"));
        }
        if *part == "*" {
            if !last {
                return Err(format!("route {text:?}: '*' may only be the last segment"));
            }
            tail = true;
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "route {text:?}: parameter {{{name}}} needs a name of letters, digits and '_'"
                ));
            }
            segments.push(Segment::Param(name.to_string()));
        } else if part.contains(['{', '}', '*']) {
            return Err(format!(
                "route {text:?}: segment {part:?} mixes text with '{{', '}}' or '*'"
            ));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    Ok(Route {
        text: text.to_string(),
        segments,
        tail,
    })
}

impl Route {
    /// Matches `path` and returns the `{param}` values.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_string())),
            }
        }
        if self.tail || parts.next().is_none() {
            Some(params)
        } else {
            None
        }
    }

    /// The shape of the route with parameter names erased: two routes with the same shape
    /// claim the same requests.
    pub fn shape(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Param(_) => s.push_str("{}"),
            }
        }
        if self.tail {
            s.push_str("/*");
        }
        s
    }

    /// Literal segments outrank parameters, which outrank a tail: `/users/me` wins over
    /// `/users/{id}`, which wins over `/users/*`.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (self.segments.len(), literals, !self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_params_and_tails() {
        let cases = [
            ("/users/{id}", "/users/7", Some(vec![("id", "7")])),
            ("/users/{id}", "/users/7/x", None),
            ("/files/*", "/files/a/b", Some(vec![])),
            ("/files/*", "/files", Some(vec![])),
            ("/", "/", Some(vec![])),
            ("/hello", "/hello/", Some(vec![])),
            ("/hello", "/helloo", None),
        ];
        for (route, path, expect) in cases {
            let got = parse_route(route).unwrap().matches(path);
            let expect = expect.map(|v| {
                v.into_iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, expect, "{route} against {path}");
        }
        assert!(parse_route("/a/*/b").is_err());
        assert!(parse_route("/a/{}").is_err());
    }

    proptest::proptest! {
        /// Any route text and any path: parsing and matching never panic, and a path built
        /// from a parsed route's own segments matches it, with its parameters.
        #[test]
        fn any_route_and_path_parse_and_match_without_panicking(
            route in "[/a-z{}*_0-9]{0,24}",
            path in "[/a-z0-9.%]{0,24}",
            values in proptest::collection::vec("[a-z0-9]{1,4}", 0..6),
        ) {
            let Ok(parsed) = parse_route(&route) else { return Ok(()) };
            let _ = parsed.matches(&path);
            let mut built = String::new();
            let mut expected = Vec::new();
            for (i, segment) in parsed.segments.iter().enumerate() {
                built.push('/');
                match segment {
                    Segment::Literal(l) => built.push_str(l),
                    Segment::Param(name) => {
                        let value = values.get(i).cloned().unwrap_or_else(|| "v".to_string());
                        built.push_str(&value);
                        expected.push((name.clone(), value));
                    }
                }
            }
            if built.is_empty() {
                built.push('/');
            }
            proptest::prop_assert_eq!(parsed.matches(&built), Some(expected));
        }
    }
}
