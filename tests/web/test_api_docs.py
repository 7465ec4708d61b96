"""The API docs page (studio/api/views_docs.py): behind the login like
every page, linked from the nav, carrying the vendored Swagger UI and the
worked examples. tests/e2e/test_api_docs_browser.py draws it in a browser;
tests/integration/test_api_examples.py runs its Python examples."""

from django.conf import settings


def test_the_docs_page_needs_a_login(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_docs_page_is_in_the_nav_and_vendors_its_files(member_client):
    home = member_client.get("/").content.decode()
    assert 'href="/api/docs/"' in home
    page = member_client.get("/api/docs/").content.decode()
    for vendored in ("vendor/swagger-ui-bundle-5.35.0.min.js", "vendor/swagger-ui-5.35.0.css"):
        assert vendored in page and (settings.BASE_DIR / "static" / vendored).stat().st_size > 100_000
    assert 'data-schema-url="/api/v1/openapi.json"' in page
    for example in ('id="example-curl"', 'id="example-python"', 'id="example-openai"'):
        assert example in page
    assert "export STUDIO=http://testserver" in page  # the examples name this studio
    assert "//cdn" not in page and "https://" not in page  # nothing is fetched from elsewhere: it works offline
