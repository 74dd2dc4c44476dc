//! `{field}` templates: literal text with placeholders, one syntax for every
//! place a user builds a string from a record.
//!
//! `targets_from_json` fills them from inventory records
//! (`"{ip}:{port}"`, `{a.b}` for nested fields) and `affinity:` from a
//! target (`"{labels.app}-{host}"`). The syntax is parsed here once; each
//! user decides which placeholders exist and how a value is looked up.
//! `{{` and `}}` stand for literal braces.

/// One piece of a template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    /// A placeholder, split at `.`: `{a.b}` is `["a", "b"]`.
    Field(Vec<String>),
}

/// A parsed `"{ip}:9100"`-style template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parse `text`; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                                name.push(c)
                            }
                            _ => {
                                return Err(format!(
                                    "template {text:?}: unclosed or invalid {{field}}"
                                ));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("template {text:?}: empty {{}}"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(name.split('.').map(str::to_string).collect()));
                }
                '}' => return Err(format!("template {text:?}: unmatched '}}'")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Template(pieces))
    }

    /// Every placeholder, as its `.`-separated path, in template order.
    pub fn fields(&self) -> impl Iterator<Item = &[String]> {
        self.0.iter().filter_map(|p| match p {
            Piece::Field(path) => Some(path.as_slice()),
            Piece::Text(_) => None,
        })
    }

    /// Fill in into `out` (cleared first): `field(path, out)` appends the
    /// value of one placeholder and returns false when it has none, which
    /// stops the rendering with `Err` naming the placeholder (`"a.b"`).
    pub fn render_with<'t>(
        &'t self,
        mut field: impl FnMut(&'t [String], &mut String) -> bool,
        out: &mut String,
    ) -> Result<(), String> {
        out.clear();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path) => {
                    if !field(path, out) {
                        return Err(path.join("."));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fill `{node}` and `{service}` into a per-node setting (a destination
/// path, an API URL, an Ansible variable): the one expansion every such
/// setting uses.
pub fn for_node(template: &str, service: &str, node: &str) -> String {
    template
        .replace("{node}", node)
        .replace("{service}", service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_and_literal_braces() {
        assert!(Template::parse("{ip").is_err());
        assert!(Template::parse("ip}").is_err());
        assert!(Template::parse("{}").is_err());
        let t = Template::parse("{{x}}{a.b}:{port}").unwrap();
        let paths: Vec<String> = t.fields().map(|p| p.join(".")).collect();
        assert_eq!(paths, ["a.b", "port"]);
        let mut out = String::new();
        t.render_with(
            |path, out| {
                out.push_str(&path.concat());
                true
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, "{x}ab:port");
        let missing = t.render_with(|path, _| path[0] != "port", &mut out);
        assert_eq!(missing, Err("port".to_string()));
    }
}
