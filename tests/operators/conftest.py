"""Airflow in this process reads a throw-away home and airfed's airflow.cfg."""

from tests.support.airflow import use_test_airflow_home

use_test_airflow_home()
