//! Library events → invalidations, by the configured rules.

use crate::config::{EventKind, EventRule, Policy, Unscoped};
use std::collections::BTreeMap;

/// The fields of a library event that rules may use.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// What happened.
    pub kind: Option<EventKind>,
    /// `{track}`.
    pub track: String,
    /// `{artist}`.
    pub artist: String,
    /// `{album}`.
    pub album: String,
    /// `{old_artist}`.
    pub old_artist: String,
    /// `{old_album}`.
    pub old_album: String,
}

/// One invalidation to carry out: a policy, scoped by a tag or whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The policy.
    pub policy: String,
    /// The scoping tag; `None`: the whole policy.
    pub tag: Option<String>,
}

impl Event {
    fn placeholder(&self, name: &str) -> &str {
        match name {
            "track" => &self.track,
            "artist" => &self.artist,
            "album" => &self.album,
            "old_artist" => &self.old_artist,
            "old_album" => &self.old_album,
            _ => "",
        }
    }

    /// `template` with its placeholders filled, or `None` when one is empty.
    fn render(&self, template: &str) -> Option<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let len = rest[start..].find('}')?;
            let value = self.placeholder(&rest[start + 1..start + len]);
            if value.is_empty() {
                return None;
            }
            out.push_str(value);
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// The invalidations `event` calls for, deduplicated and in a stable order.
/// Only policies that follow events are ever selected.
pub fn targets(
    rules: &[EventRule],
    policies: &BTreeMap<String, Policy>,
    event: &Event,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for rule in rules.iter().filter(|r| Some(r.on) == event.kind) {
        let mut tags: Vec<String> = rule.tags.iter().filter_map(|t| event.render(t)).collect();
        if rule.first_tag_only {
            tags.truncate(1);
        }
        let whole = tags.is_empty();
        if whole && !rule.tags.is_empty() && rule.if_unscoped == Unscoped::Skip {
            continue;
        }
        let selected = policies.iter().filter(|(name, policy)| {
            policy.invalidation.follows_events()
                && (rule.policies.contains(name) || rule.strategies.contains(&policy.invalidation))
        });
        for (name, _) in selected {
            if whole {
                targets.push(Target {
                    policy: name.clone(),
                    tag: None,
                });
            }
            for tag in &tags {
                targets.push(Target {
                    policy: name.clone(),
                    tag: Some(tag.clone()),
                });
            }
        }
    }
    targets.sort();
    targets.dedup();
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn run(event: Event) -> Vec<(String, Option<String>)> {
        let settings = Settings::default();
        targets(&settings.events.rules, &settings.policies, &event)
            .into_iter()
            .map(|t| (t.policy, t.tag))
            .collect()
    }

    fn t(policy: &str, tag: Option<&str>) -> (String, Option<String>) {
        (policy.to_owned(), tag.map(str::to_owned))
    }

    #[test]
    fn modified_invalidates_the_old_artist_and_album() {
        let got = run(Event {
            kind: Some(EventKind::TrackModified),
            track: "42".to_owned(),
            artist: "new".to_owned(),
            album: "new album".to_owned(),
            old_artist: "old".to_owned(),
            old_album: "old album".to_owned(),
        });
        assert_eq!(
            got,
            [
                t("api_metadata", Some("album:old/old album")),
                t("api_metadata", Some("artist:old")),
                t("track_metadata", Some("track:42")),
            ]
        );
    }

    #[test]
    fn defaults_cover_each_event() {
        let track = |kind| Event {
            kind: Some(kind),
            track: "7".to_owned(),
            ..Event::default()
        };
        assert_eq!(run(track(EventKind::TrackAdded)), []);
        assert_eq!(
            run(track(EventKind::FingerprintChanged)),
            [t("track_metadata", Some("track:7"))]
        );
        // Removed without artist: only the track (the api rule has nothing to scope by).
        assert_eq!(
            run(track(EventKind::TrackRemoved)),
            [t("track_metadata", Some("track:7"))]
        );
        assert_eq!(run(track(EventKind::LibrarySync)), [t("album_year", None)]);
        let manual = |artist: &str, album: &str| Event {
            kind: Some(EventKind::ManualInvalidation),
            artist: artist.to_owned(),
            album: album.to_owned(),
            ..Event::default()
        };
        assert_eq!(
            run(manual("", "")),
            [
                t("album_year", None),
                t("api_metadata", None),
                t("track_metadata", None)
            ]
        );
        assert_eq!(
            run(manual("a", "")),
            [
                t("album_year", Some("artist:a")),
                t("api_metadata", Some("artist:a")),
                t("track_metadata", Some("artist:a"))
            ]
        );
        assert_eq!(run(manual("a", "b"))[0], t("album_year", Some("album:a/b")));
    }
}
