import click

admin_cli = click.Group("admin")
