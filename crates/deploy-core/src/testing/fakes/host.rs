//! A fake [`Host`](crate::traits::Host): an in-memory file system and scripted commands.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{Command, FileKind, Host, Output};

use super::{Faults, finish, lock};

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir,
    Link(PathBuf),
}

type Responder = Arc<dyn Fn(&Command) -> Output + Send + Sync>;

/// A fake [`Host`]: an in-memory file system, and commands answered by a responder you supply
/// (default: exit 0, no output). Every command run is recorded. Methods for [`Faults`]: the
/// trait's method names.
pub struct FakeHost {
    fs: Mutex<BTreeMap<PathBuf, Node>>,
    commands: Mutex<Vec<Command>>,
    responder: Responder,
    /// Scripted failures.
    pub faults: Faults,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("files", &lock(&self.fs).len())
            .finish_non_exhaustive()
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// An empty host with `/` only.
    pub fn new() -> Self {
        let mut fs = BTreeMap::new();
        fs.insert(PathBuf::from("/"), Node::Dir);
        Self {
            fs: Mutex::new(fs),
            commands: Mutex::new(Vec::new()),
            responder: Arc::new(|_| Output::new(Some(0), None, Vec::new(), Vec::new())),
            faults: Faults::new(),
        }
    }

    /// Answer commands with `responder`.
    pub fn with_responder(
        mut self,
        responder: impl Fn(&Command) -> Output + Send + Sync + 'static,
    ) -> Self {
        self.responder = Arc::new(responder);
        self
    }

    /// The mode of the file at `path`, if there is a file.
    pub fn mode(&self, path: &Path) -> Option<u32> {
        match lock(&self.fs).get(path) {
            Some(Node::File(_, mode)) => Some(*mode),
            _ => None,
        }
    }

    /// Every command run so far.
    pub fn commands(&self) -> Vec<Command> {
        lock(&self.commands).clone()
    }

    fn norm(path: &Path) -> Result<PathBuf> {
        if !path.is_absolute() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "resolve",
                path.display().to_string(),
                "the fake host takes absolute paths only",
            ));
        }
        let mut out = PathBuf::from("/");
        for c in path.components() {
            match c {
                Component::Normal(p) => out.push(p),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn parent_is_dir(fs: &BTreeMap<PathBuf, Node>, path: &Path, op: &'static str) -> Result<()> {
        match path.parent().map(|p| fs.get(p)) {
            Some(Some(Node::Dir)) | None => Ok(()),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                op,
                path.display().to_string(),
                "no such directory",
            )),
        }
    }
}

#[async_trait]
impl Host for FakeHost {
    fn name(&self) -> &str {
        "fake"
    }

    async fn run(&self, command: &Command) -> Result<Output> {
        let after = self.faults.enter("fake host", "run").await?;
        lock(&self.commands).push(command.clone());
        let out = (self.responder)(command);
        finish(after, Ok(out)).await
    }

    async fn write_file(&self, path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
        let after = self.faults.enter("fake host", "write_file").await?;
        let p = Self::norm(path)?;
        {
            let mut fs = lock(&self.fs);
            Self::parent_is_dir(&fs, &p, "write")?;
            if matches!(fs.get(&p), Some(Node::Dir)) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "write",
                    p.display().to_string(),
                    "is a directory",
                ));
            }
            fs.insert(p, Node::File(contents.to_vec(), mode.unwrap_or(0o644)));
        }
        finish(after, Ok(())).await
    }

    async fn upload(&self, local: &Path, path: &Path, mode: Option<u32>) -> Result<()> {
        let bytes = tokio::fs::read(local)
            .await
            .map_err(|e| Error::io("read", local.display().to_string(), e))?;
        self.write_file(path, &bytes, mode).await
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let after = self.faults.enter("fake host", "read_file").await?;
        let p = Self::norm(path)?;
        let bytes = match lock(&self.fs).get(&p) {
            Some(Node::File(b, _)) => b.clone(),
            _ => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "read",
                    p.display().to_string(),
                    "no such file",
                ));
            }
        };
        finish(after, Ok(bytes)).await
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "remove").await?;
        let p = Self::norm(path)?;
        lock(&self.fs).retain(|k, _| !(k == &p || k.starts_with(&p)));
        finish(after, Ok(())).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "rename").await?;
        let (f, t) = (Self::norm(from)?, Self::norm(to)?);
        {
            let mut fs = lock(&self.fs);
            if !fs.contains_key(&f) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "rename",
                    f.display().to_string(),
                    "no such file",
                ));
            }
            Self::parent_is_dir(&fs, &t, "rename")?;
            let moved: Vec<(PathBuf, Node)> = fs
                .iter()
                .filter(|(k, _)| k.starts_with(&f))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            fs.retain(|k, _| !k.starts_with(&f) && !k.starts_with(&t));
            for (k, v) in moved {
                let rest = k.strip_prefix(&f).unwrap_or(Path::new(""));
                fs.insert(
                    if rest.as_os_str().is_empty() {
                        t.clone()
                    } else {
                        t.join(rest)
                    },
                    v,
                );
            }
        }
        finish(after, Ok(())).await
    }

    async fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "symlink").await?;
        let l = Self::norm(link)?;
        {
            let mut fs = lock(&self.fs);
            Self::parent_is_dir(&fs, &l, "symlink")?;
            if fs.contains_key(&l) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "symlink",
                    l.display().to_string(),
                    "already exists",
                ));
            }
            fs.insert(l, Node::Link(target.to_owned()));
        }
        finish(after, Ok(())).await
    }

    async fn read_link(&self, link: &Path) -> Result<Option<PathBuf>> {
        let after = self.faults.enter("fake host", "read_link").await?;
        let l = Self::norm(link)?;
        let r = match lock(&self.fs).get(&l) {
            Some(Node::Link(t)) => Some(t.clone()),
            None => None,
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "read link",
                    l.display().to_string(),
                    "not a symlink",
                ));
            }
        };
        finish(after, Ok(r)).await
    }

    async fn create_dir_all(&self, path: &Path) -> Result<()> {
        let after = self.faults.enter("fake host", "create_dir_all").await?;
        let p = Self::norm(path)?;
        {
            let mut fs = lock(&self.fs);
            for a in p.ancestors() {
                match fs.get(a) {
                    Some(Node::Dir) => {}
                    None => {
                        fs.insert(a.to_owned(), Node::Dir);
                    }
                    Some(_) => {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            "create directory",
                            a.display().to_string(),
                            "a file is in the way",
                        ));
                    }
                }
            }
        }
        finish(after, Ok(())).await
    }

    async fn list_dir(&self, path: &Path) -> Result<Vec<(String, FileKind)>> {
        let after = self.faults.enter("fake host", "list_dir").await?;
        let p = Self::norm(path)?;
        let out = {
            let fs = lock(&self.fs);
            if !matches!(fs.get(&p), Some(Node::Dir)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "list",
                    p.display().to_string(),
                    "no such directory",
                ));
            }
            fs.iter()
                .filter(|(k, _)| k.parent() == Some(p.as_path()) && **k != p)
                .map(|(k, v)| {
                    let name = k
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (name, kind(v))
                })
                .collect()
        };
        finish(after, Ok(out)).await
    }

    async fn file_kind(&self, path: &Path) -> Result<Option<FileKind>> {
        let after = self.faults.enter("fake host", "file_kind").await?;
        let p = Self::norm(path)?;
        let k = lock(&self.fs).get(&p).map(kind);
        finish(after, Ok(k)).await
    }
}

fn kind(n: &Node) -> FileKind {
    match n {
        Node::File(..) => FileKind::File,
        Node::Dir => FileKind::Dir,
        Node::Link(_) => FileKind::Symlink,
    }
}
