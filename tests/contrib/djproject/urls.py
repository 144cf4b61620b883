from django.urls import include, path
from djapp import views

urlpatterns = [
    path("rows/enqueue", views.enqueue),
    path("rows", views.rows),
    path("admin-jobs/", include("jiggler_gevent.contrib.django.urls")),
]
