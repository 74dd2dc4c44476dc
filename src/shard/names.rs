//! File names: one place for every rule about what sd files are called.
//!
//! A node's file is `{service}_{node}.{ext}` unless the script names it
//! (`fn file_name(f)`); every name is checked before anything is written
//! under it, and temp files (`.{name}.tmp`) are hidden from every
//! `*.json`/`*.yml` glob.

use serde::Serialize;

/// Format of the sd files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Json,
    Yaml,
}

impl FileType {
    /// File extension without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            FileType::Json => "json",
            FileType::Yaml => "yaml",
        }
    }
}

/// How sd files are named when the script defines no `fn file_name(f)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileNaming {
    /// `{service}_{node}.{ext}`: a node keeps one name, so it never has two
    /// files, even for an instant.
    Stable,
    /// `{service}_{node}_{index}_{total}_{count}.{ext}`, the names of the
    /// tool promshard replaces; the name changes with the count.
    Counted,
}

/// What the file name of one node is made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileNameArgs {
    pub service: String,
    pub node: String,
    /// 1-based position of the node in sorted node order.
    pub index: usize,
    pub total: usize,
    pub count: usize,
    pub file_type: FileType,
}

/// The file name of a node when the script defines no `fn file_name(f)`.
pub fn default_file_name(a: &FileNameArgs, naming: FileNaming) -> String {
    let ext = a.file_type.ext();
    match naming {
        FileNaming::Stable => format!("{}_{}.{ext}", a.service, filename_safe(&a.node)),
        FileNaming::Counted => format!(
            "{}_{}_{}_{}_{}.{ext}",
            a.service, a.node, a.index, a.total, a.count
        ),
    }
}

/// `node` with every character but letters, digits, `.`, `-` and `_`
/// replaced by `_` (`10.0.0.1:9090` → `10.0.0.1_9090`), so that the name
/// needs no quoting in a shell, a glob or another file system.
fn filename_safe(node: &str) -> String {
    node.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The longest file name a file system takes (`NAME_MAX` on Linux).
const NAME_MAX: usize = 255;

/// Check a file name before anything is written under it.
pub fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('/') || name.contains('\\') {
        Err("contains a path separator")
    } else if name.contains("..") {
        Err("contains '..'")
    } else if name.chars().any(char::is_control) {
        Err("contains a NUL or control character")
    } else if name.starts_with('.') {
        Err("starts with '.' (reserved for temporary files)")
    } else if temp_name(name).len() > NAME_MAX {
        Err(
            "is too long: with its temporary file's '.' and '.tmp' it exceeds the 255 bytes a file name may have",
        )
    } else {
        Ok(())
    }
}

/// Temp name for `name`: hidden and not ending in the real extension.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
