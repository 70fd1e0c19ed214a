//! `ManifestTarget`: the embedded default deploy target (GitOps write-back). Sets the
//! image of named containers in Kubernetes YAML manifests in a directory to
//! `repo@sha256:…`, changing only that scalar: comments, order, quoting and every other
//! byte stay as they were. Only a parsed image reference is ever written (never text
//! from a notification), as a YAML scalar that reads back as exactly that reference, so
//! nothing but the image can change. Missing files, workloads or containers are
//! permanent errors that name what is missing. The rollout is complete once the files are written (a
//! GitOps controller applies them); history is kept by the deploy stage.

use std::fs;
use std::path::{Path, PathBuf};

use saphyr_parser::{Event as YamlEvent, Parser, ScalarStyle};

use crate::config::{ManifestDeploy, WorkloadRef};
use crate::error::{Error, Result};
use crate::ports::{Applied, DeployRequest, DeployTarget, Rollout, WorkloadImage};
use crate::reference::{self, ImageRef};

/// Rewrites manifests in a directory.
#[derive(Debug, Clone)]
pub struct ManifestTarget {
    pub dir: PathBuf,
    pub workloads: Vec<WorkloadRef>,
}

impl ManifestTarget {
    pub fn from_config(cfg: &ManifestDeploy, resolve: impl Fn(&Path) -> PathBuf) -> ManifestTarget {
        ManifestTarget {
            dir: resolve(&cfg.dir),
            workloads: cfg.workloads.clone(),
        }
    }

    fn files(&self) -> Result<Vec<PathBuf>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            Error::permanent(
                format!("manifest directory {}", self.dir.display()),
                format!("cannot be read: {e}"),
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Finds every configured container's image scalar.
    fn locate(&self) -> Result<Vec<Located>> {
        let files = self.files()?;
        let mut parsed = vec![];
        for f in &files {
            let text = fs::read_to_string(f).map_err(|e| Error::io("read manifest", f, e))?;
            let docs = parse_documents(&text).map_err(|e| {
                Error::permanent(
                    format!("manifest {}", f.display()),
                    format!("is not valid YAML: {e}"),
                )
            })?;
            parsed.push((f.clone(), text, docs));
        }
        let mut out = vec![];
        for w in &self.workloads {
            let mut seen = vec![];
            let mut found = None;
            for (file, text, docs) in &parsed {
                found = find_in(file, text, docs, w, &mut seen)?;
                if found.is_some() {
                    break;
                }
            }
            let Some(found) = found else {
                return Err(Error::permanent(
                    format!("manifest directory {}", self.dir.display()),
                    format!(
                        "no {} named {:?}{} in any .yaml file (found: {})",
                        w.kind,
                        w.name,
                        w.namespace
                            .as_ref()
                            .map(|n| format!(" in namespace {n}"))
                            .unwrap_or_default(),
                        if seen.is_empty() {
                            "nothing".into()
                        } else {
                            seen.join(", ")
                        }
                    ),
                ));
            };
            out.push(found);
        }
        Ok(out)
    }

    /// Writes `images[i]` into each located container. Only parsed references can be
    /// written, each as a scalar of the style it replaces (a plain scalar YAML would
    /// misread becomes single-quoted).
    fn write(&self, located: &[Located], images: &[ImageRef]) -> Result<()> {
        let mut by_file: Vec<(PathBuf, Vec<Edit>)> = vec![];
        for (loc, new) in located.iter().zip(images) {
            if loc.image == new.to_string() {
                continue;
            }
            let edit = (loc.start, loc.end, loc.style, new.clone());
            match by_file.iter_mut().find(|(f, _)| f == &loc.file) {
                Some((_, edits)) => edits.push(edit),
                None => by_file.push((loc.file.clone(), vec![edit])),
            }
        }
        for (file, mut edits) in by_file {
            let text =
                fs::read_to_string(&file).map_err(|e| Error::io("read manifest", &file, e))?;
            edits.sort_by_key(|e| std::cmp::Reverse(e.0));
            let text = apply_edits(text, &edits)
                .map_err(|e| Error::permanent(format!("manifest {}", file.display()), e))?;
            let tmp = file.with_extension("yaml.baton-tmp");
            fs::write(&tmp, &text).map_err(|e| Error::io("write manifest", &tmp, e))?;
            fs::rename(&tmp, &file).map_err(|e| Error::io("replace manifest", &file, e))?;
        }
        Ok(())
    }

    /// The images the configured containers run now, per workload.
    pub fn current(&self) -> Result<Vec<WorkloadImage>> {
        Ok(self
            .locate()?
            .into_iter()
            .map(|l| WorkloadImage {
                workload: l.workload,
                image: l.image,
            })
            .collect())
    }
}

/// The image scalar of workload `w`'s container in one parsed file, if the file has the
/// workload; the kinds and names it has are added to `seen`.
fn find_in(
    file: &Path,
    text: &str,
    docs: &[Node],
    w: &WorkloadRef,
    seen: &mut Vec<String>,
) -> Result<Option<Located>> {
    for doc in docs {
        let kind = doc.get("kind").and_then(Node::as_str).unwrap_or("");
        let name = doc
            .path(&["metadata", "name"])
            .and_then(Node::as_str)
            .unwrap_or("");
        let ns = doc.path(&["metadata", "namespace"]).and_then(Node::as_str);
        if !kind.is_empty() {
            seen.push(format!("{kind}/{name}"));
        }
        if kind != w.kind.as_str() || name != w.name {
            continue;
        }
        if let Some(want) = &w.namespace
            && ns.unwrap_or("default") != want
        {
            continue;
        }
        let containers = doc
            .path(&["spec", "template", "spec", "containers"])
            .and_then(Node::as_seq)
            .unwrap_or(&[]);
        let container = containers
            .iter()
            .find(|c| c.get("name").and_then(Node::as_str) == Some(w.container.as_str()));
        let Some(container) = container else {
            let names: Vec<&str> = containers
                .iter()
                .filter_map(|c| c.get("name").and_then(Node::as_str))
                .collect();
            return Err(Error::permanent(
                format!("{}/{} in {}", w.kind, w.name, file.display()),
                format!(
                    "has no container named {:?} (containers: {})",
                    w.container,
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        let Some(Node::Scalar {
            value,
            start,
            end,
            style,
        }) = container.get("image")
        else {
            return Err(Error::permanent(
                format!("{}/{} in {}", w.kind, w.name, file.display()),
                format!("container {:?} has no image field", w.container),
            ));
        };
        // An empty (null) image has no extent of its own to replace: writing there
        // could land anywhere in the structure. Refused; a placeholder image fixes it.
        if value.trim().is_empty() {
            return Err(Error::permanent(
                format!("{}/{} in {}", w.kind, w.name, file.display()),
                format!(
                    "container {:?} has an empty image field; write a placeholder image there (e.g. `image: example/app:0.0.0`)",
                    w.container
                ),
            ));
        }
        let (start, end) = scalar_extent(
            text,
            char_to_byte(text, *start),
            char_to_byte(text, *end),
            *style,
            value,
        )
        .ok_or_else(|| {
            Error::permanent(
                format!("{}/{} in {}", w.kind, w.name, file.display()),
                format!(
                    "the image of container {:?} is not a single-line scalar",
                    w.container
                ),
            )
        })?;
        return Ok(Some(Located {
            workload: format!("{}/{}:{}", w.kind, w.name, w.container),
            file: file.to_path_buf(),
            start,
            end,
            style: match style {
                ScalarStyle::SingleQuoted => reference::ScalarStyle::SingleQuoted,
                ScalarStyle::DoubleQuoted => reference::ScalarStyle::DoubleQuoted,
                _ => reference::ScalarStyle::Plain,
            },
            image: value.clone(),
        }));
    }
    Ok(None)
}

/// Applies edits (sorted from the end of the text) to a manifest's text.
fn apply_edits(mut text: String, edits: &[Edit]) -> std::result::Result<String, &'static str> {
    for (start, end, style, new) in edits {
        let (scalar, requoted) = reference::yaml_scalar(new, *style);
        let (s, e) = if *style != reference::ScalarStyle::Plain && !requoted {
            (start + 1, end.saturating_sub(1))
        } else {
            (*start, *end)
        };
        if e < s || e > text.len() || !text.is_char_boundary(s) || !text.is_char_boundary(e) {
            return Err("image scalar out of range");
        }
        text.replace_range(s..e, &scalar);
    }
    Ok(text)
}

/// A rewritten text, the range of the input that was replaced and the range of the
/// output that replaced it.
pub type Rewritten = (String, std::ops::Range<usize>, std::ops::Range<usize>);

/// What the rewriter does to one manifest's text (for fuzzing and tests): the image of
/// `w`'s container set to `image`, with the byte range that changed in the input and in
/// the output; `Ok(None)` when the text has no such workload.
#[doc(hidden)]
pub fn rewrite_text(text: &str, w: &WorkloadRef, image: &ImageRef) -> Result<Option<Rewritten>> {
    let docs = parse_documents(text)
        .map_err(|e| Error::permanent("manifest", format!("is not valid YAML: {e}")))?;
    let Some(found) = find_in(Path::new("manifest"), text, &docs, w, &mut vec![])? else {
        return Ok(None);
    };
    let edit = (found.start, found.end, found.style, image.clone());
    let out = apply_edits(text.to_string(), std::slice::from_ref(&edit))
        .map_err(|e| Error::permanent("manifest", e))?;
    let tail = text.len() - found.end;
    Ok(Some((
        out.clone(),
        found.start..found.end,
        found.start..out.len() - tail,
    )))
}

/// The image `w`'s container names in a manifest's text, as written.
#[doc(hidden)]
pub fn image_in(text: &str, w: &WorkloadRef) -> Result<Option<String>> {
    let docs = parse_documents(text)
        .map_err(|e| Error::permanent("manifest", format!("is not valid YAML: {e}")))?;
    Ok(find_in(Path::new("manifest"), text, &docs, w, &mut vec![])?.map(|l| l.image))
}

/// A replacement of one scalar: (start, end, style, new reference).
type Edit = (usize, usize, reference::ScalarStyle, ImageRef);

#[derive(Debug, Clone)]
struct Located {
    workload: String,
    file: PathBuf,
    start: usize,
    end: usize,
    style: reference::ScalarStyle,
    image: String,
}

impl DeployTarget for ManifestTarget {
    fn kind(&self) -> &'static str {
        "manifest"
    }

    async fn apply(&self, req: &DeployRequest) -> Result<Applied> {
        let located = self.locate()?;
        let new = req.image.pinned();
        let new_text = new.to_string();
        let previous: Vec<WorkloadImage> = located
            .iter()
            .map(|l| WorkloadImage {
                workload: l.workload.clone(),
                image: l.image.clone(),
            })
            .collect();
        let changed = located.iter().any(|l| l.image != new_text);
        self.write(&located, &vec![new; located.len()])?;
        let files: std::collections::BTreeSet<String> = located
            .iter()
            .filter_map(|l| l.file.file_name().map(|f| f.to_string_lossy().into_owned()))
            .collect();
        Ok(Applied {
            previous,
            changed,
            detail: if changed {
                format!(
                    "set {} container image(s) in {} ({})",
                    located.len(),
                    self.dir.display(),
                    files.into_iter().collect::<Vec<_>>().join(", ")
                )
            } else {
                format!(
                    "{} already in {}",
                    req.image.short_digest(),
                    self.dir.display()
                )
            },
        })
    }

    async fn rollout(&self, req: &DeployRequest) -> Result<Rollout> {
        let want = req.image.reference();
        let located = self.locate()?;
        match located.iter().find(|l| l.image != want) {
            None => Ok(Rollout::Complete {
                detail: "manifests written".into(),
            }),
            Some(l) => Ok(Rollout::Failed {
                reason: format!(
                    "{} was changed to {} behind Baton's back",
                    l.workload,
                    reference::excerpt(&l.image)
                ),
            }),
        }
    }

    /// Puts the previous images back. Each must be an image reference; anything else
    /// (a record tampered with) is refused before any file changes.
    async fn restore(&self, _req: &DeployRequest, previous: &[WorkloadImage]) -> Result<()> {
        let located = self.locate()?;
        let mut images = Vec::with_capacity(located.len());
        for l in &located {
            let text = previous
                .iter()
                .find(|p| p.workload == l.workload)
                .map_or(l.image.as_str(), |p| p.image.as_str());
            images.push(text.parse::<ImageRef>().map_err(|e| {
                Error::permanent(
                    format!("restore {} in {}", l.workload, self.dir.display()),
                    format!("refused to write {e}"),
                )
            })?);
        }
        self.write(&located, &images)
    }
}

/// A YAML node with the character span of scalars.
#[derive(Debug, Clone)]
enum Node {
    Scalar {
        value: String,
        start: usize,
        end: usize,
        style: ScalarStyle,
    },
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    Other,
}

impl Node {
    fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }
    fn as_seq(&self) -> Option<&[Node]> {
        match self {
            Node::Seq(v) => Some(v),
            _ => None,
        }
    }
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |n, k| n.get(k))
    }
}

fn parse_documents(text: &str) -> std::result::Result<Vec<Node>, String> {
    let mut parser = Parser::new_from_str(text);
    let mut docs = vec![];
    // Stack of containers under construction: (node, pending key for maps).
    let mut stack: Vec<(Node, Option<Node>)> = vec![];
    let mut root: Option<Node> = None;
    while let Some(next) = parser.next_event() {
        let (ev, span) = next.map_err(|e| e.to_string())?;
        let node = match ev {
            YamlEvent::StreamStart | YamlEvent::Nothing => continue,
            YamlEvent::StreamEnd => break,
            YamlEvent::DocumentStart(_) => {
                root = None;
                continue;
            }
            YamlEvent::DocumentEnd => {
                if let Some(r) = root.take() {
                    docs.push(r);
                }
                continue;
            }
            YamlEvent::MappingStart(..) => {
                stack.push((Node::Map(vec![]), None));
                continue;
            }
            YamlEvent::SequenceStart(..) => {
                stack.push((Node::Seq(vec![]), None));
                continue;
            }
            YamlEvent::MappingEnd | YamlEvent::SequenceEnd => match stack.pop() {
                Some((n, _)) => n,
                None => return Err("unbalanced YAML structure".into()),
            },
            YamlEvent::Scalar(value, style, _, _) => Node::Scalar {
                value: value.into_owned(),
                start: span.start.index(),
                end: span.end.index(),
                style,
            },
            YamlEvent::Alias(_) => Node::Other,
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some((Node::Seq(items), _)) => items.push(node),
            Some((Node::Map(pairs), pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => pairs.push((key, node)),
            },
            Some(_) => return Err("unexpected YAML structure".into()),
        }
    }
    Ok(docs)
}

/// The byte range of a scalar, quotes included. The parser's end marker of a quoted
/// scalar can run on into a trailing comment, so quotes are matched here.
fn scalar_extent(
    text: &str,
    start: usize,
    end: usize,
    style: ScalarStyle,
    value: &str,
) -> Option<(usize, usize)> {
    let rest = text.get(start..)?;
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let line = &rest[..line_end];
    match style {
        // A plain scalar may go on over the next lines (more indented ones, even one
        // that is only `-` before a comment): it is one line only when its first line
        // is the whole value the parser read. Anything else is refused, never cut.
        ScalarStyle::Plain => {
            let first = text.get(start..end.min(start + line_end))?.trim_end();
            (first == value).then_some((start, start + first.len()))
        }
        ScalarStyle::DoubleQuoted => {
            let mut escaped = false;
            for (i, c) in line.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return Some((start, start + i + 1)),
                    _ => escaped = false,
                }
            }
            None
        }
        ScalarStyle::SingleQuoted => {
            let bytes = line.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Some((start, start + i + 1));
                }
                i += 1;
            }
            None
        }
        _ => None,
    }
}

fn char_to_byte(text: &str, char_index: usize) -> usize {
    text.char_indices()
        .nth(char_index)
        .map(|(b, _)| b)
        .unwrap_or(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Image;

    const MANIFEST: &str = r#"# web deployment — owned by the platform team
apiVersion: v1
kind: Service
metadata:
  name: web
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # the app
  namespace: shop
spec:
  replicas: 2
  template:
    spec:
      initContainers:
        - name: migrate
          image: "registry.local/web:old"
      containers:
        - name: sidecar
          image: envoyproxy/envoy:v1.30
        - name: app
          image: "registry.local/web:old"   # updated by baton
          ports: [{containerPort: 8080}]
"#;

    fn target(dir: &Path, container: &str) -> ManifestTarget {
        ManifestTarget {
            dir: dir.to_path_buf(),
            workloads: vec![WorkloadRef {
                kind: crate::config::WorkloadKind::Deployment,
                name: "web".into(),
                container: container.into(),
                namespace: Some("shop".into()),
            }],
        }
    }

    fn req(hex: char) -> DeployRequest {
        DeployRequest {
            app: "web".into(),
            environment: "staging".into(),
            run: crate::ids::run_id("web", "sha256:0"),
            image: Image::parse(
                "registry.local",
                "web",
                "1.0.0",
                &format!("sha256:{}", hex.to_string().repeat(64)),
            )
            .unwrap(),
            cause: "test".into(),
        }
    }

    #[tokio::test]
    async fn rewrites_only_the_named_container_image() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        fs::write(&file, MANIFEST).unwrap();
        let t = target(dir.path(), "app");
        let r = req('a');
        let applied = t.apply(&r).await.unwrap();
        assert!(applied.changed);
        assert_eq!(applied.previous[0].image, "registry.local/web:old");
        let after = fs::read_to_string(&file).unwrap();
        let expected = MANIFEST.replacen(
            "image: \"registry.local/web:old\"   # updated",
            &format!("image: \"{}\"   # updated", r.image.reference()),
            1,
        );
        assert_eq!(after, expected, "only the app container's image changed");
        assert!(matches!(
            t.rollout(&r).await.unwrap(),
            Rollout::Complete { .. }
        ));
        // idempotent
        assert!(!t.apply(&r).await.unwrap().changed);
        // restore puts the previous value back byte for byte
        t.restore(&r, &applied.previous).await.unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), MANIFEST);
        // plain scalars too
        let t2 = target(dir.path(), "sidecar");
        t2.apply(&r).await.unwrap();
        assert!(
            fs::read_to_string(&file)
                .unwrap()
                .contains(&format!("image: {}\n", r.image.reference()))
        );
    }

    /// Found by the `manifest` fuzz target: an empty image (`image:` then a comment)
    /// has no extent of its own, and writing the reference there moved it out of the
    /// container. Refused, and nothing is written.
    #[test]
    fn an_empty_image_field_is_refused_not_rewritten() {
        let w = WorkloadRef {
            kind: crate::config::WorkloadKind::Deployment,
            name: "web".into(),
            container: "app".into(),
            namespace: None,
        };
        let image: ImageRef = req('a').image.pinned();
        for empty in [
            "image: # set by baton\n          ports: []",
            "image:\n          ports: []",
            "image: ''",
        ] {
            let text = format!(
                "kind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          {empty}\n"
            );
            let e = rewrite_text(&text, &w, &image).unwrap_err();
            assert!(
                e.to_string().contains("empty image field"),
                "{empty:?}: {e}"
            );
        }
        // A placeholder is rewritten, and only it.
        let text = "kind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: x # set by baton\n";
        let (out, before, after) = rewrite_text(text, &w, &image).unwrap().unwrap();
        assert_eq!(&text[before.clone()], "x");
        assert_eq!(out[after].to_string(), image.to_string());
        assert_eq!(image_in(&out, &w).unwrap(), Some(image.to_string()));
    }

    #[tokio::test]
    async fn missing_things_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(&dir.path().join("nope"), "app");
        let e = t.apply(&req('a')).await.unwrap_err();
        assert_eq!(e.kind(), "permanent");
        assert!(e.to_string().contains("nope"), "{e}");
        fs::write(dir.path().join("web.yaml"), MANIFEST).unwrap();
        let e = target(dir.path(), "worker")
            .apply(&req('a'))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"worker\"") && e.contains("sidecar, app"),
            "{e}"
        );
        let mut t = target(dir.path(), "app");
        t.workloads[0].name = "api".into();
        let e = t.apply(&req('a')).await.unwrap_err().to_string();
        assert!(e.contains("\"api\"") && e.contains("Deployment/web"), "{e}");
    }

    #[tokio::test]
    async fn a_tampered_previous_image_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        fs::write(&file, MANIFEST).unwrap();
        let t = target(dir.path(), "app");
        let r = req('a');
        t.apply(&r).await.unwrap();
        let before = fs::read(&file).unwrap();
        let hostile = vec![WorkloadImage {
            workload: "Deployment/web:app".into(),
            image: "x\n          securityContext:\n            privileged: true".into(),
        }];
        let e = t.restore(&r, &hostile).await.unwrap_err().to_string();
        assert!(e.contains("refused to write"), "{e}");
        assert_eq!(fs::read(&file).unwrap(), before, "nothing changed");
    }

    #[tokio::test]
    async fn every_scalar_style_reads_back_as_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        let d = format!("sha256:{}", "e".repeat(64));
        let v6 = Image::parse("[::1]:5000", "web", "1.0.0", &d).unwrap();
        for (style, line) in [
            ("plain", "image: registry.local/web:old # c"),
            ("single", "image: 'registry.local/web:old' # c"),
            ("double", "image: \"registry.local/web:old\" # c"),
        ] {
            let text = MANIFEST.replace(
                "image: \"registry.local/web:old\"   # updated by baton",
                line,
            );
            fs::write(&file, &text).unwrap();
            let t = target(dir.path(), "app");
            let mut r = req('e');
            r.image = v6.clone();
            t.apply(&r).await.unwrap();
            let after = fs::read_to_string(&file).unwrap();
            let docs: Vec<serde_json::Value> = after
                .split("\n---\n")
                .map(|d| serde_yaml_ng::from_str(d).unwrap())
                .collect();
            assert_eq!(
                docs[1]["spec"]["template"]["spec"]["containers"][1]["image"],
                v6.reference(),
                "{style}: {after}"
            );
            assert!(
                matches!(t.rollout(&r).await.unwrap(), Rollout::Complete { .. }),
                "{style}"
            );
        }
    }
}

#[cfg(test)]
mod multi_line {
    use super::*;

    /// Found by `fuzz/run manifest`: a plain image scalar that goes on over a more
    /// indented line (here only `-` before a comment) was cut to its first line, so the
    /// rewritten manifest's image read back with the rest appended.
    #[test]
    fn a_plain_image_going_on_over_lines_is_refused_not_cut() {
        let image: ImageRef = "localhost:5000/demo/web@sha256:89c8ddc0798381cf38663148bbe53b2133096cd87368441fc997d6a7c2a17405"
            .parse()
            .unwrap();
        let w: WorkloadRef =
            serde_json::from_value(serde_json::json!({"name": "web", "container": "app"})).unwrap();
        let manifest = |image_lines: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n{image_lines}      restartPolicy: Always\n"
            )
        };
        for lines in [
            "          image: example/app:1.0.0\n            - # more\n",
            "          image: example/app:1.0.0\n            and more\n",
        ] {
            let text = manifest(lines);
            let e = rewrite_text(&text, &w, &image).unwrap_err();
            assert!(e.to_string().contains("not a single-line scalar"), "{e}");
        }
        // One line, with a comment after it, still rewrites.
        let text = manifest("          image: example/app:1.0.0   # pinned by baton\n");
        let (out, _, _) = rewrite_text(&text, &w, &image).unwrap().unwrap();
        assert_eq!(image_in(&out, &w).unwrap(), Some(image.to_string()));
        assert!(out.contains("   # pinned by baton\n"), "{out}");
    }
}
