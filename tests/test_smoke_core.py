from course.models import Subscriber


def test_app_builds_on_each_database(app):
    from course.extensions import db

    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Subscriber)) == 0
