//! The forum's browser page: `index.html`, `app.js`, `style.css` and `favicon.svg` from
//! `assets/`, compiled into the binary so that a web server needs no files at run time.
//!
//! The page is plain HTML, CSS and JavaScript without a build step. It uses only the JSON API
//! under `/api/` and the event stream at `/api/events`, and it works under a
//! `Content-Security-Policy` of `script-src 'self'; style-src 'self'` because it has no inline
//! scripts, styles or event handler attributes. The ids and `data-testid` attributes that
//! browser tests can rely on are listed in the comment at the top of `assets/index.html`.

/// Each asset's file name, content type and bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
    ),
];

/// Returns the content type and bytes of the asset named `path` (a bare file name such as
/// `"app.js"`, without `/assets/`), or `None` when there is no such asset.
///
/// A web server serves `GET /` with `asset("index.html")` and `GET /assets/{file}` with
/// `asset(file)`. Only the exact names above match, so no path can reach other files.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(name: &str) -> &'static str {
        let (_, bytes) = asset(name).unwrap_or_else(|| panic!("asset {name:?} is missing"));
        std::str::from_utf8(bytes)
            .unwrap_or_else(|error| panic!("asset {name:?} is not UTF-8: {error}"))
    }

    /// Returns every value of `attribute="..."` in `html`, in order.
    fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
        let marker = format!(" {attribute}=\"");
        let mut values = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find(&marker) {
            rest = &rest[start + marker.len()..];
            let end = rest
                .find('"')
                .expect("attribute value has no closing quote");
            values.push(&rest[..end]);
            rest = &rest[end..];
        }
        values
    }

    /// Returns the keys of one language's table in app.js: the lines of the form
    /// `    key: "text",` between `  {language}: {` and the next `  },`.
    fn translation_keys(app_js: &str, language: &str) -> Vec<String> {
        let opening = format!("\n  {language}: {{\n");
        let start = app_js
            .find(&opening)
            .unwrap_or_else(|| panic!("app.js has no {language:?} table"))
            + opening.len();
        let length = app_js[start..]
            .find("\n  },")
            .expect("language table is not closed");
        app_js[start..start + length]
            .lines()
            .filter_map(|line| line.trim().split_once(':').map(|(key, _)| key.to_owned()))
            .collect()
    }

    #[test]
    fn index_html_references_resolve() {
        let html = text_of("index.html");
        let mut referenced = Vec::new();
        for attribute in ["src", "href"] {
            for value in attribute_values(html, attribute) {
                if let Some(name) = value.strip_prefix("/assets/") {
                    referenced.push(name);
                } else {
                    assert!(
                        value.starts_with('#'),
                        "index.html links to {value:?} outside /assets/"
                    );
                }
            }
        }
        for name in ["app.js", "style.css", "favicon.svg"] {
            assert!(
                referenced.contains(&name),
                "index.html does not load {name}"
            );
        }
        for name in referenced {
            assert!(
                asset(name).is_some(),
                "index.html references /assets/{name}, which asset() does not serve"
            );
        }
    }

    #[test]
    fn asset_content_types() {
        assert_eq!(
            asset("index.html").map(|(kind, _)| kind),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            asset("app.js").map(|(kind, _)| kind),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            asset("style.css").map(|(kind, _)| kind),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(
            asset("favicon.svg").map(|(kind, _)| kind),
            Some("image/svg+xml")
        );
    }

    #[test]
    fn asset_rejects_unknown_paths() {
        for path in [
            "",
            "/",
            "index.htm",
            "/app.js",
            "assets/app.js",
            "../Cargo.toml",
            "APP.JS",
            "app.js/",
        ] {
            assert!(asset(path).is_none(), "asset({path:?}) returned something");
        }
    }

    #[test]
    fn index_html_fits_strict_csp() {
        let html = text_of("index.html");
        assert!(
            !html.contains("<style"),
            "index.html has an inline <style> element"
        );
        assert!(
            !html.contains(" style=\""),
            "index.html has an inline style attribute"
        );
        for (position, _) in html.match_indices("<script") {
            let tag_end = position + html[position..].find('>').expect("unclosed <script> tag");
            assert!(
                html[position..tag_end].contains(" src=\"/assets/"),
                "index.html has an inline script"
            );
        }
        for (position, _) in html.match_indices(" on") {
            let word: String = html[position + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            let after = &html[position + 1 + word.len()..];
            assert!(
                !after.starts_with('='),
                "index.html has an event handler attribute {word:?}"
            );
        }
    }

    #[test]
    fn translations_cover_both_languages() {
        let app_js = text_of("app.js");
        let english = translation_keys(app_js, "en");
        let spanish = translation_keys(app_js, "es");
        assert!(
            english.len() > 20,
            "the English table looks truncated: {english:?}"
        );
        assert_eq!(
            english, spanish,
            "the English and Spanish tables must have the same keys in the same order"
        );

        let html = text_of("index.html");
        for attribute in ["data-i18n", "data-i18n-placeholder", "data-i18n-aria-label"] {
            for key in attribute_values(html, attribute) {
                assert!(
                    english.iter().any(|known| known == key),
                    "index.html uses the missing translation key {key:?}"
                );
            }
        }
        for (position, _) in app_js.match_indices("t(\"") {
            // Skip calls such as split("-") whose name only ends in "t".
            let before = app_js[..position].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let rest = &app_js[position + 3..];
            let key = &rest[..rest.find('"').expect("unclosed string")];
            assert!(
                english.iter().any(|known| known == key),
                "app.js uses the missing translation key {key:?}"
            );
        }
    }

    #[test]
    fn app_js_never_assigns_inner_html() {
        let app_js = text_of("app.js");
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(
                !app_js.contains(forbidden),
                "app.js uses {forbidden}, which could inject user text as HTML"
            );
        }
    }
}
