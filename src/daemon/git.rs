//! `--source git`: read the manifests from the commit at HEAD instead of the work tree, so a
//! half-saved file or a half-finished checkout is never seen, and every run can record the
//! revision it applied. Shells out to `git` (plumbing commands only: `rev-parse`, `ls-tree`,
//! `cat-file --batch`), as an operator's own tools would.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Where a manifests directory sits in its repository.
#[derive(Clone, Debug)]
pub struct Repo {
    /// The manifests directory (the work-tree path tend was given).
    pub dir: PathBuf,
    /// `.git` (absolute), watched for HEAD and ref changes.
    pub git_dir: PathBuf,
    /// The manifests directory's path inside the repository, with a trailing `/` (or empty).
    prefix: String,
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_owned())
}

impl Repo {
    /// Find the repository that holds `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Repo> {
        let git_dir = git(dir, &["rev-parse", "--absolute-git-dir"]).with_context(|| {
            format!("--source git: {} is not in a git work tree", dir.display())
        })?;
        let prefix = git(dir, &["rev-parse", "--show-prefix"])?;
        Ok(Repo {
            dir: dir.to_path_buf(),
            git_dir: PathBuf::from(git_dir),
            prefix,
        })
    }

    /// The commit at HEAD and every manifest file in it, as (path relative to the manifests
    /// directory, contents).
    pub fn read_head(&self) -> anyhow::Result<(String, Vec<crate::manifest::SourceFile>)> {
        let rev = git(&self.dir, &["rev-parse", "--verify", "HEAD^{commit}"])?;
        let listing = git(
            &self.dir,
            &["ls-tree", "-r", "-z", "--full-name", &rev, "--", "."],
        )?;
        let mut entries = Vec::new();
        for item in listing.split('\0').filter(|s| !s.is_empty()) {
            let Some((meta, path)) = item.split_once('\t') else {
                continue;
            };
            let mut parts = meta.split(' ');
            let (_mode, kind, oid) = (parts.next(), parts.next(), parts.next());
            let (Some("blob"), Some(oid)) = (kind, oid) else {
                continue;
            };
            let Some(rel) = path.strip_prefix(&self.prefix) else {
                continue;
            };
            let rel = PathBuf::from(rel);
            let hidden = rel
                .components()
                .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.')));
            if !hidden && crate::manifest::is_manifest_path(&rel) {
                entries.push((rel, oid.to_owned()));
            }
        }
        // As in the files walk: a directory holding a Pulumi program is not manifests.
        let programs: Vec<PathBuf> = entries
            .iter()
            .filter(|(p, _)| p.file_name().is_some_and(|n| n == "Pulumi.yaml"))
            .filter_map(|(p, _)| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(Path::to_path_buf)
            })
            .collect();
        entries.retain(|(p, _)| !programs.iter().any(|dir| p.starts_with(dir)));
        let contents = cat_blobs(&self.dir, entries.iter().map(|(_, oid)| oid.as_str()))?;
        let files = entries
            .into_iter()
            .zip(contents)
            .map(|((path, _), bytes)| {
                let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned());
                (path, text)
            })
            .collect();
        Ok((rev, files))
    }

    /// Whether a path under the git dir moves HEAD (a commit, checkout, reset or pull).
    pub fn is_ref_change(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.git_dir) else {
            return false;
        };
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("");
        matches!(first, "HEAD" | "refs" | "packed-refs")
    }
}

/// Read blobs through one `git cat-file --batch`.
fn cat_blobs<'a>(dir: &Path, oids: impl Iterator<Item = &'a str>) -> anyhow::Result<Vec<Vec<u8>>> {
    let oids: Vec<&str> = oids.collect();
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git cat-file")?;
    let mut input = String::new();
    for oid in &oids {
        input.push_str(oid);
        input.push('\n');
    }
    let mut stdin = child.stdin.take().context("git cat-file stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut reader = BufReader::new(child.stdout.take().context("git cat-file stdout")?);
    let mut out = Vec::with_capacity(oids.len());
    for oid in &oids {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        // "<oid> blob <size>\n"
        let size: usize = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("git cat-file: unexpected answer for {oid}: {header:?}"))?;
        let mut buf = vec![0; size + 1];
        reader.read_exact(&mut buf)?;
        buf.truncate(size);
        out.push(buf);
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("git cat-file writer panicked"))??;
    let status = child.wait()?;
    if !status.success() {
        bail!("git cat-file failed");
    }
    Ok(out)
}
