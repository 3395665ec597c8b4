from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0002_diagnostics"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingsession",
            name="data_file",
            field=models.FileField(blank=True, upload_to="uploads/%Y/%m/"),
        ),
        migrations.AddField(
            model_name="trainingsession",
            name="target_column",
            field=models.CharField(blank=True, max_length=200),
        ),
    ]
