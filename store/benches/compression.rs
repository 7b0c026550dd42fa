//! What compression saves and costs, on MusicBrainz- and Last.fm-shaped
//! JSON: bytes stored with and without zstd, and the time of a Put and a Get
//! through the store (one caller, sequential) with compression on and off,
//! side by side in each round, median of five rounds, on SQLite and (when
//! reachable) Postgres.
//!
//!     cargo bench -p roadie-store --bench compression

use std::time::{Duration, Instant};

use roadie_store::{
    Backend, ChangeKind, Compression, EntryPut, Store, StoreOptions, now_ms, testing::TestDb,
};

const VALUES: usize = 400;
const ROUNDS: usize = 5;

/// A small deterministic generator, so every run writes the same data.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn word(&mut self) -> &'static str {
        const WORDS: [&str; 24] = [
            "house",
            "disco",
            "electronic",
            "french",
            "paris",
            "robot",
            "album",
            "tour",
            "discovery",
            "homework",
            "daft",
            "punk",
            "live",
            "remix",
            "single",
            "vinyl",
            "records",
            "studio",
            "band",
            "duo",
            "helmet",
            "grammy",
            "funk",
            "synth",
        ];
        WORDS[(self.next() % WORDS.len() as u64) as usize]
    }
    fn sentence(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.word())
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn uuid(&mut self) -> String {
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            self.next() as u32,
            self.next() as u16,
            self.next() % 0x1000,
            self.next() % 0x1000,
            self.next() << 16 | self.next() & 0xffff
        )
    }
}

/// A MusicBrainz artist lookup with aliases, tags and release groups
/// (`inc=aliases+tags+release-groups`): about 6 KiB.
fn musicbrainz(words: &mut Words) -> String {
    let aliases: Vec<String> = (0..6)
        .map(|_| format!(r#"{{"name":"{}","sort-name":"{}","type":"Artist name","locale":null,"primary":null,"begin":null,"end":null}}"#, words.sentence(2), words.sentence(2)))
        .collect();
    let tags: Vec<String> = (0..10)
        .map(|_| {
            format!(
                r#"{{"count":{},"name":"{}"}}"#,
                words.next() % 40,
                words.sentence(2)
            )
        })
        .collect();
    let groups: Vec<String> = (0..20)
        .map(|_| format!(r#"{{"id":"{}","title":"{}","primary-type":"Album","secondary-types":[],"first-release-date":"{}-0{}-1{}","disambiguation":""}}"#, words.uuid(), words.sentence(3), 1990 + words.next() % 35, 1 + words.next() % 9, words.next() % 10))
        .collect();
    format!(
        r#"{{"id":"{}","name":"{}","sort-name":"{}","type":"Group","country":"FR","disambiguation":"{}","life-span":{{"begin":"1993","end":"2021-02-22","ended":true}},"aliases":[{}],"tags":[{}],"release-groups":[{}]}}"#,
        words.uuid(),
        words.sentence(2),
        words.sentence(2),
        words.sentence(4),
        aliases.join(","),
        tags.join(","),
        groups.join(",")
    )
}

/// A Last.fm `artist.getInfo` answer with its biography, similar artists
/// and tags: about 4 KiB.
fn lastfm(words: &mut Words) -> String {
    let images: Vec<String> = ["small", "medium", "large", "extralarge", "mega"]
        .iter()
        .map(|size| format!(r##"{{"#text":"https://lastfm.freetls.fastly.net/i/u/{}/{:x}.png","size":"{size}"}}"##, size, words.next()))
        .collect();
    let similar: Vec<String> = (0..5)
        .map(|_| {
            format!(
                r#"{{"name":"{}","url":"https://www.last.fm/music/{}","image":[]}}"#,
                words.sentence(2),
                words.word()
            )
        })
        .collect();
    let tags: Vec<String> = (0..5)
        .map(|_| {
            format!(
                r#"{{"name":"{}","url":"https://www.last.fm/tag/{}"}}"#,
                words.word(),
                words.word()
            )
        })
        .collect();
    format!(
        r#"{{"artist":{{"name":"{}","mbid":"{}","url":"https://www.last.fm/music/{}","image":[{}],"streamable":"0","ontour":"0","stats":{{"listeners":"{}","playcount":"{}"}},"similar":{{"artist":[{}]}},"tags":{{"tag":[{}]}},"bio":{{"published":"01 Jan 2006, 00:00","summary":"{}","content":"{}"}}}}}}"#,
        words.sentence(2),
        words.uuid(),
        words.word(),
        images.join(","),
        words.next(),
        words.next(),
        similar.join(","),
        tags.join(","),
        words.sentence(60),
        words.sentence(300)
    )
}

fn entry(key: String, value: String) -> EntryPut {
    EntryPut {
        key,
        value: value.into_bytes(),
        media_type: "application/json".to_owned(),
        policy: "api_metadata".to_owned(),
        tags: vec![],
        confidence: 0,
        fingerprint: None,
        metadata: Default::default(),
        negative: false,
        expires_at: None,
        provenance: None,
        keep_higher_confidence: false,
        if_revision: None,
        kind: ChangeKind::Put,
        now: now_ms(),
    }
}

/// Per-op Put and Get times and the bytes stored, for one store.
async fn measure(store: &Store, values: &[String]) -> (Duration, Duration, u64) {
    let started = Instant::now();
    for (i, value) in values.iter().enumerate() {
        store
            .entry_put(&entry(format!("k{i}"), value.clone()))
            .await
            .expect("put");
    }
    let put = started.elapsed() / values.len() as u32;
    let started = Instant::now();
    for (i, value) in values.iter().enumerate() {
        let got = store
            .entry_get(&format!("k{i}"))
            .await
            .expect("get")
            .expect("entry");
        assert_eq!(got.value.len(), value.len());
    }
    let get = started.elapsed() / values.len() as u32;
    let usage = store.entry_usage().await.expect("usage");
    (put, get, usage.iter().map(|u| u.bytes).sum())
}

async fn open(backend: Backend, compression: Option<Compression>) -> Option<(TestDb, Store)> {
    let db = TestDb::new(backend).await?;
    let mut options = StoreOptions::new(&db.url);
    options.compression = compression;
    let store = Store::connect(&options).await.expect("store");
    Some((db, store))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("# cargo bench -p roadie-store --bench compression");
    println!(
        "# {VALUES} values per shape, Put then Get each, one caller; median of {ROUNDS} rounds, off and on side by side"
    );
    println!(
        "{:<9} {:<12} {:>9} {:>9} {:>6}  {:>9} {:>9} {:>6}  {:>9} {:>9} {:>6}",
        "backend",
        "shape",
        "bytes",
        "stored",
        "ratio",
        "put off",
        "put on",
        "on/off",
        "get off",
        "get on",
        "on/off"
    );
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for (shape, make) in [
            ("musicbrainz", musicbrainz as fn(&mut Words) -> String),
            ("lastfm", lastfm),
        ] {
            let mut words = Words(42);
            let values: Vec<String> = (0..VALUES).map(|_| make(&mut words)).collect();
            let raw: u64 = values.iter().map(|v| v.len() as u64).sum();
            let (mut puts, mut gets) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
            let mut stored = [0, 0];
            for _ in 0..ROUNDS {
                for (i, compression) in [None, Some(Compression::default())].into_iter().enumerate()
                {
                    let Some((db, store)) = open(backend, compression).await else {
                        println!("{backend:?}: no database; skipped");
                        return;
                    };
                    let (put, get, bytes) = measure(&store, &values).await;
                    puts[i].push(put);
                    gets[i].push(get);
                    stored[i] = bytes;
                    store.close().await;
                    db.finish().await;
                }
            }
            let [put_off, put_on] = puts.map(median);
            let [get_off, get_on] = gets.map(median);
            let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
            println!(
                "{:<9} {:<12} {:>9} {:>9} {:>6.2}  {:>9} {:>9} {:>6.2}  {:>9} {:>9} {:>6.2}",
                backend.name(),
                shape,
                raw / VALUES as u64,
                stored[1] / VALUES as u64,
                stored[1] as f64 / raw as f64,
                us(put_off),
                us(put_on),
                put_on.as_secs_f64() / put_off.as_secs_f64(),
                us(get_off),
                us(get_on),
                get_on.as_secs_f64() / get_off.as_secs_f64(),
            );
            assert_eq!(stored[0], raw, "off: stored as written");
        }
    }
}
