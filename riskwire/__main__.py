from riskwire.cli import main

main()
