from eventtrail.cli import main

main()
