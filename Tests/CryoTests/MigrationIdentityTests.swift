// The identity both ends of a migration derive from the key file: the same key
// gives the same public key on both ends (each end's certificate differs: fresh
// serial and signature), another key gives another, and only a chain whose leaf
// holds the derived key is accepted. No root, no network.

@testable import CryoNet
import Testing

@Suite("migration identity from the key file (no root)")
struct MigrationIdentityTests {
    static let ours = [UInt8](repeating: 0x5a, count: 32)
    static let theirs = (0..<32).map { UInt8($0) }

    @Test("both ends derive the same public key; another key derives another")
    func sameKeySamePublicKey() throws {
        let source = try MigrationIdentity(key: Self.ours)
        let destination = try MigrationIdentity(key: Self.ours)
        let stranger = try MigrationIdentity(key: Self.theirs)
        #expect(source.publicKey == destination.publicKey)
        #expect(source.publicKey.count > 64, "not a P-256 SubjectPublicKeyInfo: \(source.publicKey.count) bytes")
        #expect(stranger.publicKey != source.publicKey)
    }

    @Test("a peer is accepted only with a certificate for the derived key")
    func acceptsOnlyTheDerivedKey() throws {
        let destination = try MigrationIdentity(key: Self.ours)
        let source = try MigrationIdentity(key: Self.ours)
        let stranger = try MigrationIdentity(key: Self.theirs)
        #expect(destination.accepts([source.certificate]))
        #expect(!destination.accepts([stranger.certificate]))
        #expect(!destination.accepts([]))
        // A stranger's leaf is refused even when the right certificate follows it.
        #expect(!destination.accepts([stranger.certificate, source.certificate]))
    }
}
