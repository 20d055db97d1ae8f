//! Compiling a `sources:` entry: its name and path, the provider adapter
//! with its secrets and options, and the event type/id extractors.

use std::path::Path;

use serde_saphyr::Spanned;

use super::{Compiler, Ctx, base_of, valid_name};
use crate::condition;
use crate::config::diag::Owner;
use crate::config::node::{Kind, Node, Pos};
use crate::config::raw::SourceConfig;
use crate::providers::{
    self, Algorithm, Encoding, Extractor, HmacOptions, ProviderSettings, Secret, Source,
};

impl Compiler {
    pub(super) fn source(&mut self, file: &Path, s: &SourceConfig) {
        let name = s.name.value.clone();
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Source(name.clone())),
        };
        let name_pos = Pos::of(&s.name);
        let mut ok = true;
        if !valid_name(&name) {
            self.error(
                &ctx,
                name_pos,
                "a source name may use only letters, digits, `-`, `_` and `.`",
            );
            ok = false;
        }
        if let Some(first) = self.source_names.get(&name) {
            let msg = format!("duplicate source name, first defined at {first}");
            self.error(&ctx, name_pos, msg);
            ok = false;
        } else {
            self.source_names.insert(name.clone(), ctx.origin(name_pos));
        }

        let kind = s.provider.value.as_str();
        let provider_pos = Pos::of(&s.provider);
        if !providers::KINDS.contains(&kind) {
            let msg = format!(
                "unknown provider `{kind}` (expected one of {})",
                providers::KINDS.join(", ")
            );
            self.error(&ctx, provider_pos, msg);
            ok = false;
        }
        if kind == "none" {
            self.warn(
                &ctx,
                provider_pos,
                "`provider: none` accepts requests without checking any signature",
            );
        }

        let secrets = self.secrets_of(&ctx, s.secret.as_ref());
        let tolerance = s.tolerance.as_ref().and_then(|t| self.duration(&ctx, t));
        if s.tolerance.is_some() && tolerance.is_none() {
            ok = false;
        }
        let url = match &s.url {
            Some(u) => match self.expand_spanned(&ctx, u) {
                Some(text) if url::Url::parse(&text).is_ok() => Some(text),
                Some(_) => {
                    self.error(&ctx, Pos::of(u), format!("invalid URL {:?}", u.value));
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let hmac = self.hmac_options(&ctx, s, kind == "hmac");
        let event_type = s.event_type.as_ref().and_then(|e| self.extractor(&ctx, e));
        let event_id = s.event_id.as_ref().and_then(|e| self.extractor(&ctx, e));
        // Kept aside (sources sit below rules); any error discards the set.
        match s.respond.as_ref().map(|r| self.respond(&ctx, r)) {
            Some(Some(r)) => {
                self.source_responds.insert(name.clone(), r);
            }
            Some(None) => ok = false,
            None => {}
        }

        let path = match &s.path {
            Some(p) if !p.value.starts_with('/') => {
                self.error(&ctx, Pos::of(p), "a path must start with `/`");
                ok = false;
                String::new()
            }
            Some(p) => p.value.clone(),
            None => format!("/hooks/{name}"),
        };
        let path_pos = s.path.as_ref().map_or(name_pos, Pos::of);
        if let Some((other, first)) = self.source_paths.get(&path) {
            let msg = format!("path {path} is already served by source {other:?} at {first}");
            self.error(&ctx, path_pos, msg);
            ok = false;
        } else {
            self.source_paths
                .insert(path.clone(), (name.clone(), ctx.origin(path_pos)));
        }

        if !providers::KINDS.contains(&kind) {
            return;
        }
        let Some(secrets) = secrets else { return };
        self.secrets.extend(secrets.iter().cloned());
        let settings = ProviderSettings {
            secrets,
            tolerance,
            hmac,
        };
        let secret_pos = s.secret.as_ref().map_or(provider_pos, |n| n.pos);
        match providers::build(kind, settings) {
            Ok(provider) if ok => self.sources.push(Source {
                name,
                provider,
                path,
                url,
                event_type,
                event_id,
                origin: ctx.origin(name_pos),
            }),
            Ok(_) => {}
            Err(msg) => self.error(&ctx, secret_pos, msg),
        }
    }

    fn secrets_of(&mut self, ctx: &Ctx<'_>, node: Option<&Node>) -> Option<Vec<Secret>> {
        let Some(node) = node else {
            return Some(Vec::new());
        };
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match item.as_str() {
                Some(text) => match self.expand(ctx, text, item.pos) {
                    Some(v) if v.is_empty() => {
                        self.error(ctx, item.pos, "the secret is empty");
                        ok = false;
                    }
                    Some(v) => out.push(Secret::new(v)),
                    None => ok = false,
                },
                None => {
                    let msg = format!(
                        "`secret` must be a string or a list of strings, found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn hmac_options(
        &mut self,
        ctx: &Ctx<'_>,
        s: &SourceConfig,
        is_hmac: bool,
    ) -> Option<HmacOptions> {
        let fields = [
            ("header", &s.header),
            ("algorithm", &s.algorithm),
            ("encoding", &s.encoding),
            ("prefix", &s.prefix),
            ("timestamp_header", &s.timestamp_header),
        ];
        if !is_hmac {
            for (field, value) in fields {
                if let Some(v) = value {
                    let msg = format!("`{field}` applies only to `provider: hmac`");
                    self.error(ctx, Pos::of(v), msg);
                }
            }
            return None;
        }
        let header = match &s.header {
            Some(h) if http::HeaderName::from_bytes(h.value.as_bytes()).is_ok() => h.value.clone(),
            Some(h) => {
                self.error(
                    ctx,
                    Pos::of(h),
                    format!("invalid header name {:?}", h.value),
                );
                return None;
            }
            None => {
                self.error(
                    ctx,
                    Pos::of(&s.provider),
                    "`provider: hmac` needs `header:` (the header carrying the signature)",
                );
                return None;
            }
        };
        let algorithm = match s.algorithm.as_ref().map(|a| (a.value.as_str(), Pos::of(a))) {
            None | Some(("sha256", _)) => Algorithm::Sha256,
            Some(("sha1", _)) => Algorithm::Sha1,
            Some(("sha512", _)) => Algorithm::Sha512,
            Some((other, pos)) => {
                let msg = format!("unknown algorithm `{other}` (expected sha1, sha256 or sha512)");
                self.error(ctx, pos, msg);
                return None;
            }
        };
        let encoding = match s.encoding.as_ref().map(|e| (e.value.as_str(), Pos::of(e))) {
            None | Some(("hex", _)) => Encoding::Hex,
            Some(("base64", _)) => Encoding::Base64,
            Some((other, pos)) => {
                let msg = format!("unknown encoding `{other}` (expected hex or base64)");
                self.error(ctx, pos, msg);
                return None;
            }
        };
        Some(HmacOptions {
            header,
            algorithm,
            encoding,
            prefix: s
                .prefix
                .as_ref()
                .map(|p| p.value.clone())
                .unwrap_or_default(),
            timestamp_header: s.timestamp_header.as_ref().map(|t| t.value.clone()),
        })
    }

    fn extractor(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Extractor> {
        let text = s.value.trim();
        if text.starts_with('$') {
            match condition::compile_path(text) {
                Ok(q) => Some(Extractor::Path(q)),
                Err(msg) => {
                    self.error(ctx, Pos::of(s), msg);
                    None
                }
            }
        } else {
            match http::HeaderName::from_bytes(text.as_bytes()) {
                Ok(h) => Some(Extractor::Header(h.as_str().to_owned())),
                Err(_) => {
                    let msg = format!("{text:?} is neither a JSONPath (`$…`) nor a header name");
                    self.error(ctx, Pos::of(s), msg);
                    None
                }
            }
        }
    }
}
