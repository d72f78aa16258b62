//! Syntax of Kubernetes names, as `k8s.io/apimachinery/pkg/util/validation` defines it.
//!
//! Each check returns why a string is not valid, in words a user can act on.

/// A DNS-1123 label: namespace names. At most 63 lowercase alphanumerics or `-`, alphanumeric at
/// both ends.
pub fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "must be 1 to 63 characters long, got {}",
            name.len()
        ));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !name.bytes().all(allowed) || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "\"{name}\" must consist of lowercase letters, digits and '-', and start and end \
             with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS-1035 label: Service names, which become DNS names and environment variables. A
/// DNS-1123 label that starts with a letter.
pub fn dns1035_label(name: &str) -> Result<(), String> {
    dns_label(name)?;
    if name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!("\"{name}\" must start with a lowercase letter"))
    }
}

/// A DNS-1123 subdomain: names of most objects and label key prefixes. At most 253 characters,
/// dot-separated DNS labels.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "must be 1 to 253 characters long, got {}",
            name.len()
        ));
    }
    if name.split('.').all(|label| dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" must consist of lowercase letters, digits, '-' and '.', and start and \
             end with a letter or digit"
        ))
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
pub fn label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix).map_err(|why| format!("prefix of label key {why}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(format!("label key \"{key}\" has an empty name"));
    }
    label_value(name).map_err(|_| {
        format!(
            "label key \"{key}\" must be at most 63 letters, digits, '-', '_' or '.' (after an \
             optional DNS prefix and '/'), and start and end with a letter or digit"
        )
    })
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`; alphanumeric at both ends.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let inner = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = value.len() <= 63
        && value.bytes().all(inner)
        && ends(value.chars().next())
        && ends(value.chars().last());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "label value \"{value}\" must be at most 63 letters, digits, '-', '_' or '.', and \
             start and end with a letter or digit"
        ))
    }
}

/// An `IANA_SVC_NAME` (RFC 6335): the name of a container port, which a `NetworkPolicy` may use
/// instead of a number.
pub fn port_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "port name \"{name}\" must be 1 to 15 characters long, got {}",
            name.len()
        ));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        // The usual cause: `port: "80"` is a string, so Kubernetes reads it as a name.
        return Err(format!(
            "port name \"{name}\" must contain a letter; write a port number without quotes"
        ));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !name.bytes().all(allowed) {
        return Err(format!(
            "port name \"{name}\" must consist of lowercase letters, digits and '-'"
        ));
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!("port name \"{name}\" must contain a letter"));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "port name \"{name}\" must not start or end with '-' or contain \"--\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_rfc_6335() {
        for good in ["http", "web-80", "h2c", "a", "metrics-port-15"] {
            assert_eq!(port_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "-http",
            "http-",
            "ht--tp",
            "a-very-long-port-name",
            "ht_tp",
        ] {
            assert!(port_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_may_have_a_dns_prefix() {
        for good in ["app", "app.kubernetes.io/name", "a_b.c-d", "x/Y"] {
            assert_eq!(label_key(good), Ok(()), "{good}");
        }
        for bad in ["", "/app", "app/", "-app", "Foo.com/app", "a/b/c", "app$"] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_values_may_be_empty() {
        assert_eq!(label_value(""), Ok(()));
        assert_eq!(label_value("v1.2_beta-3"), Ok(()));
        assert!(label_value("-v1").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        assert_eq!(dns_label("kube-system"), Ok(()));
        assert!(dns_label("Kube").is_err());
        assert!(dns_label("a.b").is_err());
        assert_eq!(dns_subdomain("a.b-c"), Ok(()));
        assert_eq!(dns1035_label("web-1"), Ok(()));
        assert!(dns1035_label("1web").is_err());
        assert!(dns_subdomain("a..b").is_err());
    }
}
