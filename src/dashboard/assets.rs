//! The page, embedded in the binary: no CDN, no network at build or run time, no build
//! step. `assets/` holds the files as they are served.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The file served at `path`: the page itself at `/` (its routes are in the fragment,
/// `#/rollouts/NS/NAME`, so every view is this one document).
pub fn find(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/app.css" => ("text/css; charset=utf-8", APP_CSS),
        "/icon.svg" | "/favicon.ico" => ("image/svg+xml", ICON),
        _ => return None,
    };
    Some(Asset {
        content_type,
        body: body.as_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_should_load_only_its_own_script_and_style_and_no_inline_code() {
        let html = std::str::from_utf8(find("/").unwrap().body).unwrap();
        assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/app.css">"#));
        assert_eq!(
            html.matches("<script").count(),
            1,
            "one script, from a file"
        );
        for inline in [" on", "javascript:", "style=", "http://", "https://"] {
            assert!(!html.contains(inline), "the page holds {inline:?}");
        }
        let js = std::str::from_utf8(find("/app.js").unwrap().body).unwrap();
        for unsafe_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(
                !js.contains(unsafe_sink),
                "app.js uses {unsafe_sink}: render text only"
            );
        }
        assert!(
            !js.contains("http://") && !js.contains("https://"),
            "no other origin"
        );
        assert!(find("/../Cargo.toml").is_none());
    }
}
