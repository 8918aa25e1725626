//! Request URLs: a checked base URL plus one route.
//!
//! Path segments are percent-encoded one by one and query values are form-encoded, so no
//! argument (a session id, a user name, a cursor) can change which route is called. Only
//! plain `http://` base URLs are accepted: this build carries no TLS stack.

use reqwest::Url;

use crate::Error;

/// The server's base URL, parsed and checked once when the client is built.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// Parsed form, with no query, fragment or user info; routes are appended to its path.
    url: Url,
    /// The base as shown to people: the URL without a trailing `/`.
    shown: String,
}

impl Base {
    /// Checks a base URL such as `http://127.0.0.1:7480` or `http://host/sessiond/`.
    ///
    /// Errors never echo the input: a URL with `user:password@` in it would leak them.
    pub(crate) fn parse(base: &str) -> Result<Base, Error> {
        let url = Url::parse(base.trim()).map_err(|e| {
            Error::InvalidArgument(format!(
                "the server URL is not a valid URL ({e}); expected e.g. http://127.0.0.1:7480"
            ))
        })?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(Error::InvalidArgument(
                    "https:// server URLs are not supported: this client speaks plain HTTP; \
                     use an http:// URL"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "the server URL must start with http://, e.g. http://127.0.0.1:7480".to_owned(),
                ));
            }
        }
        if url.host().is_none() {
            return Err(Error::InvalidArgument(
                "the server URL has no host".to_owned(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::InvalidArgument(
                "the server URL must not carry a user name or password; \
                 the credential is passed separately"
                    .to_owned(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::InvalidArgument(
                "the server URL must not have a query or a fragment".to_owned(),
            ));
        }
        let shown = url.as_str().trim_end_matches('/').to_owned();
        Ok(Base { url, shown })
    }

    /// The base URL without its trailing `/`.
    pub(crate) fn as_str(&self) -> &str {
        &self.shown
    }

    /// The URL of a route: `segments` are appended to the base path, each percent-encoded;
    /// `query` pairs are form-encoded, and an empty `query` leaves no `?`.
    pub(crate) fn route(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, Error> {
        let mut path = self.url.path().trim_end_matches('/').to_owned();
        for segment in segments {
            path.push('/');
            path.push_str(&encode_segment(segment)?);
        }
        let mut url = self.url.clone();
        url.set_path(&path);
        if query.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(query);
        }
        Ok(url)
    }
}

/// Percent-encodes one path segment: every byte but RFC 3986's unreserved characters.
///
/// `""`, `.` and `..` are refused, since they would name another route.
fn encode_segment(segment: &str) -> Result<String, Error> {
    if segment.is_empty() {
        return Err(Error::InvalidArgument(
            "an empty id or user name".to_owned(),
        ));
    }
    if segment == "." || segment == ".." {
        return Err(Error::InvalidArgument(format!(
            "`{segment}` is not a valid id or user name"
        )));
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> Base {
        Base::parse(s).unwrap()
    }

    #[test]
    fn base_is_shown_without_trailing_slash() {
        assert_eq!(
            base("http://127.0.0.1:7480").as_str(),
            "http://127.0.0.1:7480"
        );
        assert_eq!(
            base(" http://127.0.0.1:7480/ \n").as_str(),
            "http://127.0.0.1:7480"
        );
        assert_eq!(base("http://host/prefix/").as_str(), "http://host/prefix");
    }

    #[test]
    fn unusable_bases_are_refused_without_echoing_them() {
        for bad in [
            "",
            "127.0.0.1:7480",
            "localhost:7480",
            "ftp://host/",
            "https://host/",
            "http://user:hunter2@host/",
            "http://host/?a=b",
            "http://host/#frag",
        ] {
            let err = Base::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn routes_append_to_the_base_path() {
        let b = base("http://127.0.0.1:7480");
        let url = b.route(&["v1", "admin", "stats"], &[]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:7480/v1/admin/stats");
        let b = base("http://host:1/prefix/");
        let url = b.route(&["v1", "sessions"], &[]).unwrap();
        assert_eq!(url.as_str(), "http://host:1/prefix/v1/sessions");
    }

    #[test]
    fn segments_are_percent_encoded() {
        let b = base("http://h");
        let url = b
            .route(&["v1", "admin", "users", "al/ice ü?#%2e", "sessions"], &[])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h/v1/admin/users/al%2Fice%20%C3%BC%3F%23%252e/sessions"
        );
        let url = b.route(&["v1", "x", "a+b.c~d_e-f"], &[]).unwrap();
        assert_eq!(url.path(), "/v1/x/a%2Bb.c~d_e-f");
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        let b = base("http://h");
        for bad in ["", ".", ".."] {
            let err = b.route(&["v1", "admin", "sessions", bad], &[]).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}");
        }
        assert!(b.route(&["v1", "..."], &[]).is_ok());
    }

    #[test]
    fn query_values_are_form_encoded() {
        let b = base("http://h");
        let url = b
            .route(
                &["v1", "admin", "sessions"],
                &[("user", "a b&c=d"), ("limit", "5"), ("cursor", "x/y+z")],
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://h/v1/admin/sessions?user=a+b%26c%3Dd&limit=5&cursor=x%2Fy%2Bz"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("user".to_owned(), "a b&c=d".to_owned()));
        assert_eq!(pairs[2], ("cursor".to_owned(), "x/y+z".to_owned()));
    }
}
