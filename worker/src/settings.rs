//! From the deployment's typed [`Settings`] to what the claim loop takes:
//! the providers it may call ([`providers`]) and its [`WorkerOptions`]
//! ([`worker_options`]).
//!
//! No IO here: environment variables (the values of secret headers) come
//! through a lookup function, so `main` passes `std::env::var` and tests pass
//! a map. Errors are [`ConfigError`]s naming the setting at fault, the same
//! type [`Settings::load`] returns, so the binary reports both alike and
//! before it connects anywhere. Secret values never appear in an error or a
//! log line.

use std::{collections::HashMap, time::Duration};

use roadie_config::{ConfigError, Settings};
use roadie_providers::{HeaderSetting, Provider, Secret};

use crate::runner::WorkerOptions;

/// Lifetime of the NEGATIVE `failed_lookup` entry when `policies.failed_lookup`
/// is absent. (Its `ttl` of `0s` means never expires, as everywhere.)
pub const DEFAULT_FAILED_LOOKUP_TTL: Duration = Duration::from_secs(3600);

/// The providers the worker may fetch from, keyed by name: those that are
/// on ([`roadie_providers::from_settings`]), with their headers. `env` looks
/// up the environment variables named by `secret_headers`.
pub fn providers(
    settings: &Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, Provider>, ConfigError> {
    let mut providers = HashMap::new();
    for (name, mut on) in roadie_providers::from_settings(settings)? {
        let provider = &settings.providers[&name];
        let setting = |field: &str| format!("providers.{name}.{field}");
        let mut policy = on.policy;
        for (header, value) in &provider.headers {
            policy = policy
                .with_header(header, HeaderSetting::Plain(value.clone()))
                .map_err(|error| {
                    config_error(setting(&format!("headers.{header}")), error.to_string())
                })?;
        }
        for (header, variable) in &provider.secret_headers {
            let at = setting(&format!("secret_headers.{header}"));
            let value = secret(&env, variable, &at)?;
            policy = policy
                .with_header(header, HeaderSetting::Secret(value))
                .map_err(|error| config_error(at, error.to_string()))?;
        }
        for (name, variable) in &provider.secret_query {
            let at = setting(&format!("secret_query.{name}"));
            policy
                .secret_query
                .push((name.clone(), secret(&env, variable, &at)?));
        }
        for (segment, variable) in &provider.secret_path {
            let at = setting(&format!("secret_path.{segment}"));
            let index = roadie_providers::placeholder_index(&policy.base_url, segment).ok_or_else(
                || config_error(at.clone(), format!("base_url has no {{{segment}}} segment")),
            )?;
            policy.secret_path.push(roadie_providers::SecretSegment {
                index,
                name: segment.clone(),
                value: secret(&env, variable, &at)?,
            });
        }
        on.policy = policy;
        providers.insert(name, on);
    }
    Ok(providers)
}

/// The value of the environment variable `variable`, named by setting `at`:
/// set and not empty, or a configuration error naming both (never the value).
fn secret(
    env: &impl Fn(&str) -> Option<String>,
    variable: &str,
    at: &str,
) -> Result<Secret, ConfigError> {
    match env(variable) {
        Some(value) if !value.is_empty() => Ok(Secret::new(value)),
        Some(_) => Err(config_error(
            at.to_owned(),
            format!("environment variable {variable} is empty"),
        )),
        None => Err(config_error(
            at.to_owned(),
            format!("environment variable {variable} is not set"),
        )),
    }
}

/// How the claim loop runs, from `[worker]` and `policies.failed_lookup.ttl`,
/// for the worker named `id` (see [`worker_id`]).
pub fn worker_options(settings: &Settings, id: impl Into<String>) -> WorkerOptions {
    let worker = &settings.worker;
    let failed_lookup_ttl = settings
        .policies
        .get(roadie_config::FAILED_LOOKUP_POLICY)
        .map_or(DEFAULT_FAILED_LOOKUP_TTL, |policy| policy.ttl);
    WorkerOptions {
        id: id.into(),
        concurrency: worker.concurrency,
        lease: worker.lease,
        heartbeat: worker.heartbeat,
        poll_interval: worker.poll_interval,
        commit_poll: settings.watch.poll_interval,
        backoff_base: worker.backoff_base,
        backoff_max: worker.backoff_max,
        failed_lookup_ttl,
        shutdown_grace: worker.shutdown_grace,
    }
}

/// A worker's name in leases: `HOST-PID-XXXX`. The host and pid tell an
/// operator where a job runs; the random suffix keeps a restarted process
/// that got the same pid (common in containers, where it is often 1) from
/// mistaking the leases of its dead predecessor for its own.
pub fn worker_id(hostname: Option<&str>, pid: u32, suffix: u16) -> String {
    let host = hostname.map(str::trim).filter(|h| !h.is_empty());
    format!("{}-{pid}-{suffix:04x}", host.unwrap_or("worker"))
}

fn config_error(setting: String, message: String) -> ConfigError {
    ConfigError { setting, message }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use reqwest::header::HeaderValue;
    use roadie_config::Provider as ProviderSettings;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn only(provider: ProviderSettings) -> Settings {
        Settings {
            providers: BTreeMap::from([("test".to_owned(), provider)]),
            ..Settings::default()
        }
    }

    #[test]
    fn a_zero_failed_lookup_ttl_means_never_expires() {
        let mut settings = Settings::default();
        if let Some(policy) = settings.policies.get_mut("failed_lookup") {
            policy.ttl = Duration::ZERO;
        }
        assert_eq!(
            worker_options(&settings, "w").failed_lookup_ttl,
            Duration::ZERO
        );
        settings.policies.remove("failed_lookup");
        assert_eq!(
            worker_options(&settings, "w").failed_lookup_ttl,
            DEFAULT_FAILED_LOOKUP_TTL
        );
    }

    #[test]
    fn defaults_give_every_provider_but_images() {
        let providers = providers(&Settings::default(), env(&[])).expect("defaults");
        let mut names: Vec<&str> = providers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "coverartarchive",
                "discogs",
                "fanarttv",
                "lastfm",
                "musicbrainz",
                "theaudiodb",
                "wikimedia"
            ]
        );
        let musicbrainz = &providers["musicbrainz"];
        assert_eq!(
            musicbrainz.policy.base_url.as_str(),
            "https://musicbrainz.org/ws/2/"
        );
        assert_eq!(musicbrainz.policy.timeout, Duration::from_secs(15));
        assert_eq!(musicbrainz.success_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(musicbrainz.negative_ttl, Duration::from_secs(300));
        assert!(!musicbrainz.policy.allow_private);
        // max_body_bytes = 0 means limits.max_value_bytes.
        assert_eq!(musicbrainz.policy.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn provider_fields_carry_over() {
        let settings = only(ProviderSettings {
            base_url: "http://127.0.0.1:8080/api/".to_owned(),
            timeout: Duration::from_secs(3),
            success_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(6),
            allow_private: true,
            max_body_bytes: 1234,
            headers: BTreeMap::from([("accept".to_owned(), "application/json".to_owned())]),
            secret_headers: BTreeMap::from([("x-api-key".to_owned(), "TEST_KEY".to_owned())]),
            ..ProviderSettings::default()
        });
        let providers = providers(&settings, env(&[("TEST_KEY", "s3cr3t")])).expect("load");
        let test = &providers["test"];
        assert_eq!(test.policy.name, "test");
        assert_eq!(test.policy.base_url.as_str(), "http://127.0.0.1:8080/api/");
        assert_eq!(test.policy.timeout, Duration::from_secs(3));
        assert!(test.policy.allow_private);
        assert_eq!(test.policy.max_body_bytes, 1234);
        assert_eq!(
            (test.success_ttl, test.negative_ttl),
            (Duration::from_secs(60), Duration::from_secs(6))
        );
        assert_eq!(
            test.policy.headers.get("accept"),
            Some(&HeaderValue::from_static("application/json"))
        );
        let key = test.policy.headers.get("x-api-key").expect("secret header");
        assert_eq!(key.as_bytes(), b"s3cr3t");
        assert!(key.is_sensitive());
        assert!(!format!("{providers:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_missing_secret_names_the_setting_and_the_variable() {
        let settings = only(ProviderSettings {
            base_url: "https://api.discogs.com/".to_owned(),
            secret_headers: BTreeMap::from([(
                "authorization".to_owned(),
                "DISCOGS_TOKEN".to_owned(),
            )]),
            ..ProviderSettings::default()
        });
        let error = providers(&settings, env(&[])).expect_err("unset");
        assert_eq!(error.setting, "providers.test.secret_headers.authorization");
        assert!(error.message.contains("DISCOGS_TOKEN"), "{error}");
        let error = providers(&settings, env(&[("DISCOGS_TOKEN", "")])).expect_err("empty");
        assert!(error.message.contains("empty"), "{error}");
    }

    #[test]
    fn bad_headers_and_urls_name_the_setting_not_the_value() {
        let mut provider = ProviderSettings {
            base_url: "https://example.org/".to_owned(),
            secret_headers: BTreeMap::from([("x-key".to_owned(), "KEY".to_owned())]),
            ..ProviderSettings::default()
        };
        let error = providers(&only(provider.clone()), env(&[("KEY", "bad\nvalue")]))
            .expect_err("bad value");
        assert_eq!(error.setting, "providers.test.secret_headers.x-key");
        assert!(!error.to_string().contains("bad"), "{error}");

        provider.secret_headers.clear();
        provider.headers = BTreeMap::from([("bad header".to_owned(), "x".to_owned())]);
        let error = providers(&only(provider.clone()), env(&[])).expect_err("bad name");
        assert_eq!(error.setting, "providers.test.headers.bad header");

        provider.headers.clear();
        provider.base_url = "http://exa mple.org/".to_owned();
        let error = providers(&only(provider), env(&[])).expect_err("bad url");
        assert_eq!(error.setting, "providers.test.base_url");
    }

    #[test]
    fn options_follow_the_worker_section() {
        let mut settings = Settings::default();
        settings.worker.concurrency = 3;
        settings.worker.lease = Duration::from_secs(2);
        settings.worker.heartbeat = Duration::from_millis(500);
        settings.worker.poll_interval = Duration::from_millis(50);
        settings.worker.backoff_base = Duration::from_millis(10);
        settings.worker.backoff_max = Duration::from_secs(9);
        settings.worker.shutdown_grace = Duration::from_secs(4);
        if let Some(policy) = settings.policies.get_mut("failed_lookup") {
            policy.ttl = Duration::from_secs(120);
        }
        let options = worker_options(&settings, "w-1");
        assert_eq!(options.id, "w-1");
        assert_eq!(options.concurrency, 3);
        assert_eq!(options.lease, Duration::from_secs(2));
        assert_eq!(options.heartbeat, Duration::from_millis(500));
        assert_eq!(options.poll_interval, Duration::from_millis(50));
        assert_eq!(options.backoff_base, Duration::from_millis(10));
        assert_eq!(options.backoff_max, Duration::from_secs(9));
        assert_eq!(options.shutdown_grace, Duration::from_secs(4));
        assert_eq!(options.failed_lookup_ttl, Duration::from_secs(120));

        settings.policies.remove("failed_lookup");
        assert_eq!(
            worker_options(&settings, "w").failed_lookup_ttl,
            DEFAULT_FAILED_LOOKUP_TTL
        );
    }

    #[test]
    fn worker_ids_name_host_and_pid() {
        assert_eq!(worker_id(Some("box\n"), 42, 0xab), "box-42-00ab");
        assert_eq!(worker_id(Some("  "), 1, 0xffff), "worker-1-ffff");
        assert_eq!(worker_id(None, 7, 0), "worker-7-0000");
    }
}
