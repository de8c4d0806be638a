//! Credentials in URLs: `http://user:password@host/v1` is a valid
//! `base_url` (the HTTP client sends it as Basic auth), so every place that
//! prints a URL (errors, logs, `Debug`, `check-config`) prints it through
//! [`redact_url`].

use std::borrow::Cow;

/// The URL with its userinfo hidden: `user:password@` becomes `user:***@`,
/// a lone `token@` becomes `***@`. A URL without userinfo comes back as is.
/// Works on text that is not a valid URL too (it is used on config values
/// before they are checked).
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_len = url[start..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - start);
    let authority = &url[start..start + authority_len];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let shown = match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    Cow::Owned(format!("{}{shown}{}", &url[..start], &url[start + at..]))
}

/// The secret part of a URL's userinfo (the password, or a lone token), to
/// scrub from text that may quote the URL, such as a client library's error.
pub fn url_secret(url: &str) -> Option<&str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_len = url[start..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - start);
    let authority = &url[start..start + authority_len];
    let userinfo = &authority[..authority.rfind('@')?];
    let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    (!secret.is_empty()).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(
            redact_url("http://bob:s3cret@h:8000/v1"),
            "http://bob:***@h:8000/v1"
        );
        assert_eq!(
            redact_url("https://tok3n@h/v1?a=b@c"),
            "https://***@h/v1?a=b@c"
        );
        assert_eq!(redact_url("bob:pw@h:1"), "bob:***@h:1");
        assert_eq!(redact_url("http://h:8000/v1"), "http://h:8000/v1");
        assert_eq!(redact_url("http://h/p@q"), "http://h/p@q");
        assert_eq!(redact_url(""), "");
        // A password with an '@' in it: the last '@' ends the userinfo.
        assert_eq!(redact_url("http://u:a@b@h/v1"), "http://u:***@h/v1");
    }

    #[test]
    fn the_secret_is_found() {
        assert_eq!(url_secret("http://bob:s3cret@h/v1"), Some("s3cret"));
        assert_eq!(url_secret("http://tok3n@h/v1"), Some("tok3n"));
        assert_eq!(url_secret("http://bob:@h/v1"), None);
        assert_eq!(url_secret("http://h/v1"), None);
    }
}
