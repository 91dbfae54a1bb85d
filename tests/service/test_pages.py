"""The gateway's pages (service/pages.py): the demo page and /docs are served with
every asset from the gateway itself, and stay reachable with auth on."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from service.pages import STATIC

from .test_app import make_client

PAGES = ["/", "/docs"]
# any absolute or protocol-relative URL
OUTSIDE = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+", re.I)


class Refs(HTMLParser):
    """The URLs a page makes the browser load: script src, link href, img src, CSS url()."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href", "srcset", "data", "action"):
            if a.get(key):
                self.refs.append(a[key] or "")

    def handle_data(self, data: str) -> None:
        self.inline.append(data)


def test_pages_and_assets_come_from_the_gateway(checkpoints: dict[str, Path]) -> None:
    with make_client(checkpoints) as c:
        seen: set[str] = set()
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            parser = Refs()
            parser.feed(r.text)
            # no tag loads anything from another host, and no inline script names one
            loaded = [u for u in parser.refs if not u.startswith("#")]
            assert loaded, page
            assert not [u for u in loaded if OUTSIDE.match(u)], (page, loaded)
            assert not OUTSIDE.findall(" ".join(parser.inline)), page
            seen.update(u for u in loaded if u.startswith("static/"))
        # every asset those pages load is served, and the stylesheets import nothing remote
        assert {
            "static/demo.js",
            "static/demo.css",
            "static/docs/swagger-ui-bundle.js",
            "static/docs/swagger-ui.css",
        } <= seen
        for url in seen:
            r = c.get("/" + url)
            assert r.status_code == 200 and len(r.content) > 100, url
            if url.endswith(".css"):
                assert not re.findall(r"url\(\s*['\"]?(?:https?:)?//", r.text), url
        # the demo page's own script calls this gateway only (relative URLs)
        script = (STATIC / "demo.js").read_text()
        assert not OUTSIDE.findall(script), "demo.js names another host"
        assert c.get("/openapi.json").json()["info"]["title"] == "SepViT serving gateway"
        assert c.get("/redoc").status_code == 404  # ReDoc would load its logo from a CDN


def test_pages_are_public_with_auth_on_and_the_api_is_not(checkpoints: dict[str, Path]) -> None:
    with make_client(checkpoints, auth_tokens=["s3cret"]) as c:
        for url in [*PAGES, "/openapi.json", "/static/demo.js", "/static/docs/swagger-ui.css"]:
            assert c.get(url).status_code == 200, url
        assert c.get("/static/nope.js").status_code == 404
        assert c.get("/models").status_code == 401
        r = c.post("/classify", content=b"x", headers={"content-type": "image/png"})
        assert r.status_code == 401
        # the OpenAPI document says so: the bearer scheme, required but for the open paths
        # (the docs page's Authorize button then sends the token)
        doc = c.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["security"] == [{"bearer": []}]
        assert doc["paths"]["/v2/health/live"]["get"]["security"] == []
        assert "security" not in doc["paths"]["/classify"]["post"]


def test_openapi_requires_no_token_with_auth_off(checkpoints: dict[str, Path]) -> None:
    with make_client(checkpoints) as c:
        doc = c.get("/openapi.json").json()
        assert "bearer" in doc["components"]["securitySchemes"]
        assert "security" not in doc
