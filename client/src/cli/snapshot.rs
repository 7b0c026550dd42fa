//! `roadie snapshot put|get|merge|info|delete`: library snapshots from the
//! command line. Tracks are JSON objects, read as JSON lines or one JSON
//! array, each carrying its id in a field (`--id-field`, default "id").

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::{CliError, Exit, jobs::time, output::write_json};
use crate::{Client, ClientError, proto};

/// Arguments of `roadie snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do with a snapshot.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// How the library looks now, for judging validity.
#[derive(Debug, Args)]
pub struct ValidityArgs {
    /// The library's modification time now (RFC 3339, or seconds since the
    /// epoch); without it, validity is judged by age alone.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub library_mtime: Option<SystemTime>,
    /// How long a snapshot stays valid once the library changed (default:
    /// the server's snapshots.max_age, 24 h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,
}

/// The `roadie snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a snapshot whole from FILE ("-": stdin).
    Put {
        /// The snapshot's name.
        name: String,
        /// The tracks: JSON lines, or one JSON array of objects.
        file: PathBuf,
        /// The library's modification time captured before the tracks were
        /// read (RFC 3339, or seconds since the epoch).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        library_mtime: SystemTime,
        /// The field holding each track's id.
        #[arg(long, value_name = "FIELD", default_value = "id")]
        id_field: String,
        /// A file of track ids processed, one per line.
        #[arg(long, value_name = "FILE")]
        processed_ids: Option<PathBuf>,
    },
    /// Print a snapshot's tracks as JSON lines (exit 1 when it is not
    /// valid; with --only-if-valid, no tracks then).
    Get {
        /// The snapshot's name.
        name: String,
        /// How the library looks now.
        #[command(flatten)]
        validity: ValidityArgs,
        /// Print no tracks when the snapshot is not valid.
        #[arg(long)]
        only_if_valid: bool,
    },
    /// Merge a delta from FILE: tracks replaced where they stand or
    /// appended, --remove ids dropped, in one revision.
    Merge {
        /// The snapshot's name.
        name: String,
        /// Updated and new tracks: JSON lines, or one JSON array ("-": stdin).
        file: PathBuf,
        /// The library's modification time captured before the delta was read.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        library_mtime: SystemTime,
        /// The id of a removed track (repeatable).
        #[arg(long = "remove", value_name = "ID")]
        removed: Vec<String>,
        /// A file of removed track ids, one per line.
        #[arg(long, value_name = "FILE")]
        removed_file: Option<PathBuf>,
        /// The field holding each track's id.
        #[arg(long, value_name = "FIELD", default_value = "id")]
        id_field: String,
    },
    /// A snapshot's size, times and validity (exit 1 when not valid).
    Info {
        /// The snapshot's name.
        name: String,
        /// How the library looks now.
        #[command(flatten)]
        validity: ValidityArgs,
    },
    /// Delete a snapshot (exit 1 when there is none).
    Delete {
        /// The snapshot's name.
        name: String,
    },
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(seconds));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e} (RFC 3339, or seconds since the epoch)"))
}

/// Runs one `roadie snapshot` command.
pub async fn run(
    client: &Client,
    args: SnapshotArgs,
    stdin: &mut dyn Read,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    match args.command {
        SnapshotCommand::Put {
            name,
            file,
            library_mtime,
            id_field,
            processed_ids,
        } => {
            let tracks = read_tracks(&file, &id_field, stdin)?;
            let processed_ids = processed_ids
                .map(|path| read_lines(&path, stdin))
                .transpose()?
                .unwrap_or_default();
            let header = proto::SnapshotHeader {
                name,
                library_mtime: Some(library_mtime.into()),
                processed_ids,
            };
            let info = client.put_snapshot(header, tracks).await?;
            write_info(out, &info, json)?;
            Ok(Exit::Success)
        }
        SnapshotCommand::Merge {
            name,
            file,
            library_mtime,
            mut removed,
            removed_file,
            id_field,
        } => {
            let updates = read_tracks(&file, &id_field, stdin)?;
            if let Some(path) = removed_file {
                removed.extend(read_lines(&path, stdin)?);
            }
            let processed_ids = updates
                .iter()
                .map(|t| t.id.clone())
                .chain(removed.iter().cloned())
                .collect();
            let header = proto::SnapshotHeader {
                name,
                library_mtime: Some(library_mtime.into()),
                processed_ids,
            };
            let info = client.merge_snapshot(header, updates, removed).await?;
            write_info(out, &info, json)?;
            Ok(Exit::Success)
        }
        SnapshotCommand::Get {
            name,
            validity,
            only_if_valid,
        } => {
            let request = proto::GetSnapshotRequest {
                name,
                validity: Some(validity_request(&validity)?),
                only_if_valid,
                chunk_tracks: 0,
            };
            let (info, tracks) = match client.get_snapshot(request).await {
                Ok(answer) => answer,
                Err(ClientError::NotFound(message)) => return not_found(out, &message, json),
                Err(error) => return Err(error.into()),
            };
            for track in &tracks {
                out.write_all(&track.json)?;
                writeln!(out)?;
            }
            Ok(if info.valid {
                Exit::Success
            } else {
                Exit::Miss
            })
        }
        SnapshotCommand::Info { name, validity } => {
            let request = proto::GetSnapshotInfoRequest {
                name,
                validity: Some(validity_request(&validity)?),
            };
            let info = match client.get_snapshot_info(request).await {
                Ok(info) => info,
                Err(ClientError::NotFound(message)) => return not_found(out, &message, json),
                Err(error) => return Err(error.into()),
            };
            write_info(out, &info, json)?;
            Ok(if info.valid {
                Exit::Success
            } else {
                Exit::Miss
            })
        }
        SnapshotCommand::Delete { name } => match client.delete_snapshot(&name).await {
            Ok(revision) => {
                if json {
                    write_json(out, &serde_json::json!({ "revision": revision }))?;
                } else {
                    writeln!(out, "deleted (revision {revision})")?;
                }
                Ok(Exit::Success)
            }
            Err(ClientError::NotFound(message)) => not_found(out, &message, json),
            Err(error) => Err(error.into()),
        },
    }
}

fn not_found(out: &mut dyn Write, message: &str, json: bool) -> Result<Exit, CliError> {
    if json {
        write_json(out, &serde_json::json!({ "snapshot": null }))?;
    } else {
        writeln!(out, "{message}")?;
    }
    Ok(Exit::Miss)
}

fn validity_request(args: &ValidityArgs) -> Result<proto::Validity, CliError> {
    Ok(proto::Validity {
        library_mtime: args.library_mtime.map(prost_types::Timestamp::from),
        max_age: args
            .max_age
            .map(|d| super::proto_duration("--max-age", d))
            .transpose()?,
    })
}

fn read_lines(path: &Path, stdin: &mut dyn Read) -> Result<Vec<String>, CliError> {
    Ok(super::read_text(path, stdin)?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Tracks from JSON lines or one JSON array, each object's id from
/// `id_field` (a string, or a number taken as its digits).
fn read_tracks(
    path: &Path,
    id_field: &str,
    stdin: &mut dyn Read,
) -> Result<Vec<proto::Track>, CliError> {
    let text = super::read_text(path, stdin)?;
    // (line, the object's own text for JSON lines, the object).
    let objects: Vec<(usize, Option<&str>, serde_json::Value)> =
        if text.trim_start().starts_with('[') {
            let values: Vec<serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| CliError::Input {
                    line: e.line(),
                    reason: e.to_string(),
                })?;
            values.into_iter().map(|v| (0, None, v)).collect()
        } else {
            let mut objects = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(line).map_err(|e| CliError::Input {
                    line: i + 1,
                    reason: e.to_string(),
                })?;
                objects.push((i + 1, Some(line.trim()), value));
            }
            objects
        };
    objects
        .into_iter()
        .enumerate()
        .map(|(n, (line, raw, value))| {
            let at = if line == 0 { n + 1 } else { line };
            let bad = |reason: String| CliError::Input { line: at, reason };
            if !value.is_object() {
                return Err(bad("a track is a JSON object".to_owned()));
            }
            let id = match value.get(id_field) {
                Some(serde_json::Value::String(id)) => id.clone(),
                Some(serde_json::Value::Number(id)) => id.to_string(),
                _ => {
                    return Err(bad(format!(
                        "the track has no {id_field:?} field (a string or a number)"
                    )));
                }
            };
            // A line is sent as written; an array's objects as serialized.
            let json = match raw {
                Some(raw) => raw.as_bytes().to_vec(),
                None => serde_json::to_vec(&value).map_err(|e| bad(e.to_string()))?,
            };
            Ok(proto::Track { id, json })
        })
        .collect()
}

fn write_info(out: &mut dyn Write, info: &proto::SnapshotInfo, json: bool) -> Result<(), CliError> {
    if json {
        write_json(
            out,
            &serde_json::json!({
                "name": info.name,
                "tracks": info.tracks,
                "bytes": info.bytes,
                "library_mtime": time(info.library_mtime.as_ref()),
                "created_at": time(info.created_at.as_ref()),
                "updated_at": time(info.updated_at.as_ref()),
                "revision": info.revision,
                "processed_ids": info.processed_ids.len(),
                "valid": info.valid,
                "validity": info.validity,
            }),
        )?;
    } else {
        writeln!(out, "snapshot {} (revision {})", info.name, info.revision)?;
        writeln!(
            out,
            "tracks: {}  bytes: {}",
            info.tracks,
            super::output::bytes_text(info.bytes)
        )?;
        for (label, at) in [
            ("library mtime", &info.library_mtime),
            ("written", &info.created_at),
            ("updated", &info.updated_at),
        ] {
            if let Some(at) = time(at.as_ref()) {
                writeln!(out, "{label}: {at}")?;
            }
        }
        writeln!(out, "processed ids: {}", info.processed_ids.len())?;
        writeln!(out, "{}", info.validity)?;
    }
    Ok(())
}
