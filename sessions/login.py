"""Login with a limit on failed attempts, counted per client address and username."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse


def _failure_key(request: HttpRequest) -> str:
    username = request.POST.get("username", "").strip().lower()[:150]
    return f"login-failures:{request.META.get('REMOTE_ADDR', '')}:{username}"


class RateLimitedLoginView(auth_views.LoginView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        key = _failure_key(request)
        if cache.get(key, 0) >= settings.LOGIN_FAILURE_LIMIT:
            minutes = max(1, settings.LOGIN_FAILURE_WINDOW // 60)
            return self.render_to_response(
                self.get_context_data(
                    form=self.get_form(),
                    locked_out=f"Too many failed logins: try again in {minutes} min.",
                ),
                status=429,
            )
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        key = _failure_key(self.request)
        # add() starts the window on the first failure; incr() never extends it.
        if not cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW):
            cache.incr(key)
        return super().form_invalid(form)
