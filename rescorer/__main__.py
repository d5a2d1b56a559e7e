from rescorer.cli import main

main(prog_name="rescorer")
