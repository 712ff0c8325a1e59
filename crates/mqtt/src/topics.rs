//! The topic scheme. Under a prefix `medmesh/{institution}` (the institution's slug):
//!
//! | topic | who publishes | what |
//! |---|---|---|
//! | `…/devices/{device}/obs` | the device | a device message (signed readings) |
//! | `…/devices/{device}/errors` | the node | why a message was refused (JSON) |
//! | `…/devices/{device}/ack` | the node | the counter of a stored message, when the device asked |
//! | `…/devices/{device}/alerts` | the node | alerts raised from the device's readings |
//!
//! A device id is one topic level: letters, digits, `.`, `_`, `-` (as registration
//! requires), so it can never contain a wildcard.

/// The topics of one institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

/// Longest institution slug.
const MAX_SLUG: usize = 64;

impl Topics {
    /// The topics under `medmesh/{institution}`; `institution` must be a slug
    /// (`[a-z0-9-]`, 1 to 64).
    pub fn new(institution: &str) -> Result<Self, String> {
        let ok = !institution.is_empty()
            && institution.len() <= MAX_SLUG
            && institution
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!(
                "MQTT institution `{institution}` must be 1 to {MAX_SLUG} lowercase letters, digits or `-`"
            ));
        }
        Ok(Self {
            prefix: format!("medmesh/{institution}"),
        })
    }

    /// A slug made from an institution's name: lowercase, other characters as `-`.
    pub fn slug(name: &str) -> String {
        let mut slug = String::new();
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        let slug: String = slug.chars().take(MAX_SLUG).collect();
        if slug.is_empty() {
            "institution".into()
        } else {
            slug.trim_end_matches('-').to_string()
        }
    }

    /// The subscription filter of every device's observations.
    pub fn observations_filter(&self) -> String {
        format!("{}/devices/+/obs", self.prefix)
    }

    /// The device an observations topic names, or `None` for any other topic.
    pub fn device_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/devices/")?;
        let device = rest.strip_suffix("/obs")?;
        (!device.is_empty() && !device.contains('/')).then_some(device)
    }

    /// Where the node says why a message of `device` was refused.
    pub fn errors(&self, device: &str) -> String {
        format!("{}/devices/{device}/errors", self.prefix)
    }

    /// Where the node acknowledges a stored message of `device` that asked for it.
    pub fn ack(&self, device: &str) -> String {
        format!("{}/devices/{device}/ack", self.prefix)
    }

    /// Where the node publishes alerts from `device`'s readings.
    pub fn alerts(&self, device: &str) -> String {
        format!("{}/devices/{device}/alerts", self.prefix)
    }

    /// A device's observations topic (for devices and tests).
    pub fn observations(&self, device: &str) -> String {
        format!("{}/devices/{device}/obs", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_device_and_nothing_else_matches() {
        let t = Topics::new("st-mary").unwrap();
        assert_eq!(t.observations_filter(), "medmesh/st-mary/devices/+/obs");
        assert_eq!(t.device_of("medmesh/st-mary/devices/m-1/obs"), Some("m-1"));
        for other in [
            "medmesh/st-mary/devices/m-1/errors",
            "medmesh/other/devices/m-1/obs",
            "medmesh/st-mary/devices//obs",
            "medmesh/st-mary/devices/a/b/obs",
            "medmesh/st-mary/devices/m-1/obs/x",
        ] {
            assert_eq!(t.device_of(other), None, "{other}");
        }
        assert_eq!(t.errors("m-1"), "medmesh/st-mary/devices/m-1/errors");
        assert!(Topics::new("St Mary").is_err());
        assert!(Topics::new("").is_err());
        assert!(Topics::new("a/#").is_err());
        assert_eq!(Topics::slug("St. Mary's Hospital"), "st-mary-s-hospital");
        assert_eq!(Topics::slug("---"), "institution");
    }
}
