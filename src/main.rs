fn main() {
    eprintln!("deployctl: not wired yet");
    std::process::exit(1);
}
