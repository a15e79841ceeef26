"""chatusage's middleware stack runs Django's own hooks in the event loop: the same
headers, cookies and CSRF refusals, and the deploy checks still see the classes."""

from chatusage.checks import security_middleware


def test_the_deploy_check_sees_missing_security_middleware(settings):
    assert security_middleware(None) == []
    settings.MIDDLEWARE = [
        m
        for m in settings.MIDDLEWARE
        if not m.endswith((".SecurityMiddleware", ".CsrfViewMiddleware"))
    ]
    assert [w.id for w in security_middleware(None)] == ["chatusage.W001", "chatusage.W003"]
